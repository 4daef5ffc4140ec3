package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/execenv"
	"github.com/agentidd/agentidd/ipc"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// execCmd runs a command as an agent: its process tree is attested through a launch registered with the daemon, and
// it gets the managed-identity endpoint unmodified Azure SDKs use (docs/exec.md).
func execCmd(g *globals) *cobra.Command {
	var agent string
	var scopes []string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "exec --agent NAME [--scope SCOPE]... -- COMMAND [ARG]...",
		Short: "Run a command as an agent: its process tree gets the agent's tokens, also through the Azure managed-identity protocol",
		Long: `Starts COMMAND with AGENTIDD_SOCKET, IDENTITY_ENDPOINT and IDENTITY_HEADER set and registers its process tree
with the daemon as agent NAME. agentidd clients in the tree are attested through the launch; unmodified Azure SDKs
(ManagedIdentityCredential, DefaultAzureCredential) get the agent's on-behalf-of token from the endpoint. A managed-
identity request for resource R asks for R/.default (every scope the agent is consented for) unless --scope is given.
Signals are forwarded to COMMAND; agentidd exec exits with its exit code.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			code, err := runExec(cmd.Context(), g, agent, scopes, wait, args)
			if err != nil {
				return err
			}
			os.Exit(code)
			return nil
		},
	}
	cmd.Flags().StringVar(&agent, "agent", "", "agent name from the config (required)")
	cmd.Flags().StringArrayVar(&scopes, "scope", nil, "delegated scope the managed-identity endpoint asks for instead of <resource>/.default (repeatable)")
	cmd.Flags().DurationVar(&wait, "wait", 2*time.Minute, "how long a managed-identity request waits for the user's consent")
	_ = cmd.MarkFlagRequired("agent")
	return cmd
}

// forwarded are the signals passed on to the command. On Windows only os.Interrupt is delivered here, and passing it
// on fails (the console already sent it to the child), which is harmless.
var forwarded = []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT}

func runExec(ctx context.Context, g *globals, agent string, scopes []string, wait time.Duration, args []string) (int, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	endpoint := g.endpoint()
	if endpoint == "" {
		var err error
		if endpoint, err = client.Endpoint(); err != nil {
			return 0, err
		}
	}
	conn, err := client.Dial(endpoint)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	// Before the command runs: a daemon that is not there or an agent name it does not know would otherwise be found
	// out only after the command had started (and been killed part way).
	if err := checkAgent(ctx, conn, agent, endpoint); err != nil {
		return 0, err
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("agentidd", "exec")
	var launchID string // written before Bind; the endpoint reads it only after Bind
	mi, err := execenv.Start(execenv.Options{
		Agent: agent, Scopes: scopes, ConsentWait: wait, Log: log,
		Token: func(ctx context.Context, pid int, clientID string, req *agentidv1.GetTokenRequest) (*agentidv1.GetTokenResponse, error) {
			return conn.Admin.LaunchToken(ctx, &agentidv1.LaunchTokenRequest{LaunchId: launchID, CallerPid: int32(pid), Request: req, ClientId: clientID})
		},
	})
	if err != nil {
		return 0, err
	}
	defer mi.Close()

	child := exec.Command(args[0], args[1:]...)
	child.Env = append(childEnv(os.Environ()), ipc.EnvSocket+"="+endpoint)
	child.Env = append(child.Env, mi.Env()...)
	child.Stdin, child.Stdout, child.Stderr = os.Stdin, os.Stdout, os.Stderr

	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, forwarded...)
	defer signal.Stop(sigs)

	// The command starts before it is registered: no OS lets us start a process suspended portably. In that window its
	// socket calls are refused as NOT_ATTESTED and its managed-identity requests wait for Bind.
	if err := child.Start(); err != nil {
		return 0, fmt.Errorf("starting %s: %w", args[0], err)
	}
	done := make(chan error, 1)
	go func() { done <- child.Wait() }()
	regCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	reg, err := conn.Admin.RegisterLaunch(regCtx, &agentidv1.RegisterLaunchRequest{Agent: agent, RootPid: int32(child.Process.Pid)})
	cancel()
	if err != nil {
		// Whether the command had ended on its own is decided before anything is killed: after a Kill every process
		// looks "exited" on Windows. FAILED_PRECONDITION is the daemon finding no such process: give the reaper a
		// moment to see the exit.
		grace := time.Duration(0)
		if status.Code(err) == codes.FailedPrecondition {
			grace = time.Second
		}
		select {
		case <-done:
			if status.Code(err) == codes.FailedPrecondition {
				// The command finished before it could be registered (`agentidd exec -- true`): it ran, without the
				// agent's credentials, and its exit code is the answer.
				return exitCode(child.ProcessState), nil
			}
		case <-time.After(grace):
			_ = child.Process.Kill()
			<-done
		}
		return 0, fmt.Errorf("registering %s with agentidd as agent %s: %w", args[0], agent, explain(err, endpoint))
	}
	launchID = reg.GetLaunchId()
	mi.Bind(child.Process.Pid)

loop:
	for {
		select {
		case s := <-sigs:
			_ = child.Process.Signal(s)
		case <-done:
			break loop
		}
	}

	// The tree's credentials end with the command: close the endpoint, then tell the daemon (which would also notice
	// on its own, within half a second, that the root exited).
	_ = mi.Close()
	endCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, endErr := conn.Admin.EndLaunch(endCtx, &agentidv1.EndLaunchRequest{LaunchId: launchID})
	cancel()
	if endErr != nil {
		log.Warn("could not end the launch; the daemon ends it when it sees the command exited", "err", describe(endErr))
	}
	return exitCode(child.ProcessState), nil
}

// checkAgent makes sure the daemon answers and knows agent.
func checkAgent(ctx context.Context, conn *client.Conn, agent, endpoint string) error {
	resp, err := conn.Admin.ListAgents(ctx, &agentidv1.ListAgentsRequest{})
	if err != nil {
		return explain(err, endpoint)
	}
	var names []string
	for _, a := range resp.GetAgents() {
		if a.GetName() == agent {
			return nil
		}
		names = append(names, a.GetName())
	}
	if len(names) == 0 {
		return fmt.Errorf("no agent named %q: the daemon's config has no [[agent]] entries", agent)
	}
	return fmt.Errorf("no agent named %q in the daemon's config; configured: %s", agent, strings.Join(names, ", "))
}

// childEnv drops variables that would point SDKs at another identity than the agent's: other managed-identity
// endpoints, and the Azure SDKs' environment and workload-identity credentials, which DefaultAzureCredential tries
// before managed identity (a developer's service principal in the shell would otherwise act, unaudited, in the agent's
// place).
func childEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(name) {
		case ipc.EnvSocket, execenv.EnvEndpoint, execenv.EnvHeader, "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT",
			"IDENTITY_SERVER_THUMBPRINT",
			"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
			"AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN", "AZURE_USERNAME", "AZURE_PASSWORD",
			"AZURE_FEDERATED_TOKEN_FILE", "AZURE_TOKEN_CREDENTIALS":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// exitCode is the command's exit status; a command killed by a signal gives 128+signal, as shells report it.
func exitCode(ps *os.ProcessState) int {
	if ps == nil {
		return 1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	if c := ps.ExitCode(); c >= 0 {
		return c
	}
	return 1
}
