package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/config"
	"github.com/agentidd/agentidd/internal/daemon"
	"github.com/agentidd/agentidd/packaging/servicecfg"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// daemonMemoryLimit is the daemon's default soft memory limit (see BENCHMARKS.md for what 10,000 tokens cost).
const daemonMemoryLimit = 32 << 20

type globals struct {
	configPath string
	socket     string
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "agentidd",
		Short:         "Per-user daemon that gives local AI agents their own, auditable Entra Agent ID tokens",
		SilenceUsage:  true,
		SilenceErrors: false,
		Version:       daemon.VersionString(),
	}
	root.PersistentFlags().StringVar(&g.configPath, "config", "", "config file (default $AGENTIDD_CONFIG or the user config dir)")
	root.PersistentFlags().StringVar(&g.socket, "socket", "", "daemon endpoint (default $AGENTIDD_SOCKET, the config's socket, or the per-user default)")
	root.AddCommand(runCmd(g), loginCmd(g), logoutCmd(g), statusCmd(g), tokenCmd(g), grantsCmd(g), consentCmd(g), auditCmd(g), secretCmd(g), resetCmd(g), serviceCmd(g), execCmd(g))
	return root
}

// configFile is the --config flag, else $AGENTIDD_CONFIG, else the user config dir's file.
func (g *globals) configFile() (string, error) {
	if g.configPath != "" {
		return g.configPath, nil
	}
	return config.DefaultPath()
}

func (g *globals) config() (*config.Config, error) {
	path, err := g.configFile()
	if err != nil {
		return nil, err
	}
	return config.Load(path)
}

// endpoint resolves where the daemon listens: flag, env, config, default.
func (g *globals) endpoint() string {
	if g.socket != "" {
		return g.socket
	}
	if os.Getenv("AGENTIDD_SOCKET") != "" {
		return ""
	}
	if cfg, err := g.config(); err == nil && cfg.Socket != "" {
		return cfg.Socket
	}
	return ""
}

func (g *globals) dial() (*client.Conn, error) { return client.Dial(g.endpoint()) }

// where names the endpoint the CLI dials, for messages.
func (g *globals) where() string {
	if e := g.endpoint(); e != "" {
		return e
	}
	if e, err := client.Endpoint(); err == nil {
		return e
	}
	return "the per-user default endpoint"
}

// explain turns an error from a call to the daemon into one line a user can act on: a daemon that is not there says so
// and how to start it, a typed error leads with its stable reason (describe), and any other status error is just its
// message, without gRPC's "rpc error: code = ... desc = " wrapping.
func explain(err error, endpoint string) error {
	if err == nil {
		return nil
	}
	if client.Reason(err) != "" {
		return describe(err)
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	msg := st.Message()
	if st.Code() == codes.Unavailable && strings.HasPrefix(msg, "connection error") {
		for _, absent := range []string{"no such file or directory", "connection refused", "cannot find the file"} {
			if strings.Contains(strings.ToLower(msg), absent) {
				return fmt.Errorf("agentidd is not running: nothing listens on %s. Start it with `agentidd run` "+
					"(or `agentidd service start` if it is installed as a service)", endpoint)
			}
		}
		if i := strings.LastIndex(msg, "dial "); i >= 0 {
			msg = strings.TrimSuffix(msg[i:], "\"")
		}
		return fmt.Errorf("cannot connect to agentidd at %s: %s", endpoint, msg)
	}
	switch {
	case strings.Contains(msg, "invalid UTF-8"): // the client's marshaling refused the request
		return errors.New("an argument is not valid UTF-8 text: request ids, agent names and scopes are text")
	case st.Code() == codes.ResourceExhausted && strings.Contains(msg, "larger than max"):
		return errors.New("the request is too large for the daemon: an argument is far longer than any request id, agent name or scope")
	}
	return errors.New(msg)
}

func runCmd(g *globals) *cobra.Command {
	var logLevel string
	var freshOnCorrupt bool
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the daemon in the foreground (the service manager runs this)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, err := g.configFile()
			if err != nil {
				return err
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			// A background daemon on a laptop should give memory back rather than grow GC headroom with its cache: a soft
			// limit makes the collector work harder only when the heap nears it (GOMEMLIMIT overrides).
			if os.Getenv("GOMEMLIMIT") == "" {
				debug.SetMemoryLimit(daemonMemoryLimit)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if g.socket != "" {
				os.Setenv("AGENTIDD_SOCKET", g.socket)
			}
			run := func(ctx context.Context) error {
				return daemon.Run(ctx, daemon.Options{ConfigPath: path, Log: log, FreshOnCorrupt: freshOnCorrupt})
			}
			// Under the Windows service manager the daemon must report its state; elsewhere this does nothing.
			if handled, err := servicecfg.RunManaged(run); handled {
				return err
			}
			return run(ctx)
		},
	}
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	cmd.Flags().BoolVar(&freshOnCorrupt, "fresh-on-corrupt", false, "if the state file cannot be read, keep it aside and start with empty state (otherwise the daemon refuses to serve until `agentidd reset`)")
	return cmd
}

func loginCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "login",
		Short: "Sign the user in (device code): the daemon keeps the sign-in; agents never see it",
		Args:  cobra.NoArgs,
		RunE: g.withConn(func(cmd *cobra.Command, args []string, c *client.Conn) error {
			stream, err := c.Admin.Login(cmd.Context(), &agentidv1.LoginRequest{})
			if err != nil {
				return err
			}
			for {
				ev, err := stream.Recv()
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return err
				}
				if ev.GetUserUpn() != "" {
					fmt.Fprintf(cmd.OutOrStdout(), "Signed in as %s (oid %s).\n", ev.GetUserUpn(), ev.GetUserOid())
					continue
				}
				fmt.Fprintln(cmd.OutOrStdout(), ev.GetMessage())
			}
		}),
	}
}

func logoutCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "logout",
		Short: "Forget the user's sign-in and purge every token derived from it",
		Args:  cobra.NoArgs,
		RunE: g.withConn(func(cmd *cobra.Command, args []string, c *client.Conn) error {
			resp, err := c.Admin.Logout(cmd.Context(), &agentidv1.LogoutRequest{})
			if err != nil {
				return err
			}
			if !resp.GetSignedOut() {
				fmt.Fprintln(cmd.OutOrStdout(), "Nobody was signed in.")
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Signed out; %d cached token(s) purged.\n", resp.GetPurgedTokens())
			return nil
		}),
	}
}

func statusCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the daemon's state (never token values)",
		Args:  cobra.NoArgs,
		RunE: g.withConn(func(cmd *cobra.Command, args []string, c *client.Conn) error {
			st, err := c.Admin.Status(cmd.Context(), &agentidv1.StatusRequest{})
			if err != nil {
				return err
			}
			if asJSON {
				// protojson, not encoding/json: every field is printed (online = false, cached_tokens = 0 are answers,
				// not absences) under its proto name, and timestamps as RFC 3339.
				b, err := protojson.MarshalOptions{EmitUnpopulated: true, UseProtoNames: true, Multiline: true, Indent: "  "}.Marshal(st)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(cmd.OutOrStdout(), string(b))
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "agentidd %s (pid %d) on %s\n", st.GetVersion(), st.GetPid(), st.GetEndpoint())
			if st.GetDegraded() != "" {
				fmt.Fprintf(w, "DEGRADED: %s\n", st.GetDegraded())
			}
			if st.GetSignedIn() {
				fmt.Fprintf(w, "signed in: %s (oid %s)\n", st.GetUserUpn(), st.GetUserOid())
			} else if st.GetDegraded() != "" {
				fmt.Fprintln(w, "signed in: no") // login is refused until what DEGRADED names is fixed
			} else {
				fmt.Fprintln(w, "signed in: no (run `agentidd login`)")
			}
			online := "online"
			if !st.GetOnline() {
				online = "OFFLINE (serving cached tokens)"
			}
			fmt.Fprintf(w, "identity provider: %s, %s\n", st.GetAuthority(), online)
			if st.GetLastIdpErrorClass() != "" {
				fmt.Fprintf(w, "last IdP error: %s at %s\n", st.GetLastIdpErrorClass(), st.GetLastIdpErrorAt().AsTime().Local().Format(time.RFC3339))
			}
			fmt.Fprintf(w, "cached tokens: %d", st.GetCachedTokens())
			if st.GetNextRefresh() != nil {
				fmt.Fprintf(w, ", next refresh %s", st.GetNextRefresh().AsTime().Local().Format(time.RFC3339))
			}
			fmt.Fprintf(w, "\ngrants: %d, pending consent requests: %d\nsecret store: %s\n", st.GetGrants(), st.GetPendingConsents(), st.GetSecretStore())
			return nil
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func tokenCmd(g *globals) *cobra.Command {
	var agent, mode, task, justification string
	var scopes []string
	var asJSON bool
	var wait, minTTL time.Duration
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Get a token for an agent (the calling process must be bound to it, e.g. via `agentidd exec`)",
		Args:  cobra.NoArgs,
		RunE: g.withConn(func(cmd *cobra.Command, args []string, c *client.Conn) error {
			req := &agentidv1.GetTokenRequest{Agent: agent, Scopes: scopes, TaskId: task, Justification: justification}
			switch mode {
			case "obo", "":
				req.Mode = agentidv1.Mode_MODE_OBO
			case "app":
				req.Mode = agentidv1.Mode_MODE_APP
			default:
				return fmt.Errorf("--mode must be obo or app")
			}
			if wait > 0 {
				req.ConsentWait = durationpb.New(wait)
			}
			if minTTL > 0 {
				req.MinTtl = durationpb.New(minTTL)
			}
			resp, err := c.Agent.GetToken(cmd.Context(), req)
			if err != nil {
				return describe(err)
			}
			if !asJSON {
				fmt.Fprintln(cmd.OutOrStdout(), resp.GetAccessToken())
				return nil
			}
			source := "idp"
			if resp.GetSource() == agentidv1.TokenSource_TOKEN_SOURCE_CACHE {
				source = "cache"
			}
			return printJSON(cmd.OutOrStdout(), map[string]any{
				"access_token": resp.GetAccessToken(),
				"expires_at":   resp.GetExpiresAt().AsTime().UTC().Format(time.RFC3339),
				"scopes":       resp.GetScopes(),
				"principal": map[string]any{
					"user":  map[string]string{"oid": resp.GetPrincipal().GetUserOid(), "upn": resp.GetPrincipal().GetUserUpn()},
					"agent": map[string]string{"app_id": resp.GetPrincipal().GetAgentAppId(), "name": resp.GetPrincipal().GetAgentName()},
				},
				"grant_id": resp.GetGrantId(),
				"source":   source,
				"audit_id": resp.GetAuditId(),
			})
		}),
	}
	cmd.Flags().StringVar(&agent, "agent", "", "agent name from the config (required)")
	cmd.Flags().StringArrayVar(&scopes, "scope", nil, "scope, e.g. api://files.contoso.example/Files.Read (repeatable)")
	cmd.Flags().StringVar(&mode, "mode", "obo", "obo (act for the user) or app (act as the agent)")
	cmd.Flags().StringVar(&task, "task", "", "bind the consent to this task id")
	cmd.Flags().StringVar(&justification, "justification", "", "why the agent asks (shown in the consent prompt)")
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait this long for the user's consent")
	cmd.Flags().DurationVar(&minTTL, "min-ttl", 0, "minimum remaining lifetime")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON with principals and source")
	_ = cmd.MarkFlagRequired("agent")
	return cmd
}

// describe turns a status error into a one-line message with the stable reason first.
func describe(err error) error {
	reason := client.Reason(err)
	if reason == "" {
		return err
	}
	msg := err.Error()
	if i := strings.Index(msg, "desc = "); i >= 0 {
		msg = msg[i+len("desc = "):]
	}
	if id := client.Metadata(err)["request_id"]; id != "" {
		msg += " (request " + id + ")"
	}
	return fmt.Errorf("%s: %s", reason, msg)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// withConn runs fn with a connection to the daemon, closed afterwards: the shape of every command that talks to it.
func (g *globals) withConn(fn func(cmd *cobra.Command, args []string, c *client.Conn) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c, err := g.dial()
		if err != nil {
			return err
		}
		defer c.Close()
		return explain(fn(cmd, args, c), g.where())
	}
}
