package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/ipc"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// fakeAdmin answers the Admin calls the CLI tests need; the rest are Unimplemented.
type fakeAdmin struct {
	agentidv1.UnimplementedAdminServer
	agents   []string
	decide   func(*agentidv1.DecideConsentRequest) (*agentidv1.DecideConsentResponse, error)
	register func(*agentidv1.RegisterLaunchRequest) (*agentidv1.RegisterLaunchResponse, error)
}

func (f *fakeAdmin) RegisterLaunch(_ context.Context, in *agentidv1.RegisterLaunchRequest) (*agentidv1.RegisterLaunchResponse, error) {
	if f.register == nil {
		return nil, status.Error(codes.Unimplemented, "no RegisterLaunch in this test")
	}
	return f.register(in)
}

func (f *fakeAdmin) EndLaunch(context.Context, *agentidv1.EndLaunchRequest) (*agentidv1.EndLaunchResponse, error) {
	return &agentidv1.EndLaunchResponse{}, nil
}

func (f *fakeAdmin) DecideConsent(_ context.Context, in *agentidv1.DecideConsentRequest) (*agentidv1.DecideConsentResponse, error) {
	return f.decide(in)
}

func (f *fakeAdmin) ListAgents(context.Context, *agentidv1.ListAgentsRequest) (*agentidv1.ListAgentsResponse, error) {
	out := &agentidv1.ListAgentsResponse{}
	for _, n := range f.agents {
		out.Agents = append(out.Agents, &agentidv1.Agent{Name: n})
	}
	return out, nil
}

func (f *fakeAdmin) Status(context.Context, *agentidv1.StatusRequest) (*agentidv1.StatusResponse, error) {
	return &agentidv1.StatusResponse{Pid: 4242, Degraded: "the state file could not be read"}, nil
}

func (f *fakeAdmin) Logout(context.Context, *agentidv1.LogoutRequest) (*agentidv1.LogoutResponse, error) {
	return &agentidv1.LogoutResponse{}, nil // nobody signed in
}

func (f *fakeAdmin) ResetConsent(context.Context, *agentidv1.ResetConsentRequest) (*agentidv1.ResetConsentResponse, error) {
	return &agentidv1.ResetConsentResponse{}, nil
}

// shortTempDir is a directory whose paths fit a Unix socket address (t.TempDir's can be too long).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "aidcli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// fakeDaemon serves admin on a fresh socket and returns its path.
func fakeDaemon(t *testing.T, admin agentidv1.AdminServer) string {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "d.sock")
	l, err := ipc.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(ipc.ServerCredentials()), grpc.MaxRecvMsgSize(64<<10)) // the daemon's limit
	agentidv1.RegisterAdminServer(srv, admin)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return sock
}

// runCLI runs the CLI with args and returns its output (stdout and stderr) and error.
func runCLI(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	t.Setenv("AGENTIDD_CONFIG", filepath.Join(shortTempDir(t), "absent.toml"))
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// With no daemon, every command that talks to it must say that the daemon is not running and how to start it, not
// print gRPC's transport error.
func TestNoDaemonSaysHowToStartIt(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "none.sock")
	for _, args := range [][]string{{"status"}, {"consent", "list"}, {"audit", "verify"}, {"token", "--agent", "a", "--scope", "api://x/y"}} {
		_, err := runCLI(t, "", append([]string{"--socket", sock}, args...)...)
		if err == nil {
			t.Fatalf("%v: no error without a daemon", args)
		}
		msg := err.Error()
		if strings.Contains(msg, "rpc error") || strings.Contains(msg, "transport") || !strings.Contains(msg, "agentidd is not running") ||
			!strings.Contains(msg, sock) || !strings.Contains(msg, "agentidd run") {
			t.Errorf("%v: %q, want a plain 'agentidd is not running' naming %s and `agentidd run`", args, msg, sock)
		}
	}
}

// A daemon's refusal is shown as its message, without "rpc error: code = NotFound desc =".
func TestDaemonErrorsShownPlain(t *testing.T) {
	sock := fakeDaemon(t, &fakeAdmin{decide: func(in *agentidv1.DecideConsentRequest) (*agentidv1.DecideConsentResponse, error) {
		return nil, status.Errorf(codes.NotFound, "no pending consent request %s", in.GetId())
	}})
	_, err := runCLI(t, "", "--socket", sock, "consent", "approve", "cr_nope")
	if err == nil || err.Error() != "no pending consent request cr_nope" {
		t.Fatalf("consent approve of an unknown request: %v, want just the daemon's message", err)
	}
}

// consent approve --for: a negative or zero duration must be refused, not silently replaced by the default grant; the
// daemon's own spelling "7d" must be accepted.
func TestConsentApproveFor(t *testing.T) {
	var got []*agentidv1.DecideConsentRequest
	sock := fakeDaemon(t, &fakeAdmin{decide: func(in *agentidv1.DecideConsentRequest) (*agentidv1.DecideConsentResponse, error) {
		got = append(got, in)
		return &agentidv1.DecideConsentResponse{Grant: &agentidv1.Grant{Id: "g_1"}}, nil
	}})
	for _, bad := range []string{"-1h", "0s", "0", "xd", "banana"} {
		if _, err := runCLI(t, "", "--socket", sock, "consent", "approve", "cr_1", "--for", bad); err == nil {
			t.Errorf("--for %s accepted", bad)
		}
	}
	if len(got) != 0 {
		t.Fatalf("a refused --for still sent %d decision(s) to the daemon: %v", len(got), got)
	}
	if _, err := runCLI(t, "", "--socket", sock, "consent", "approve", "cr_1", "--for", "7d"); err != nil {
		t.Fatalf("--for 7d: %v", err)
	}
	if len(got) != 1 || got[0].GetDuration().AsDuration() != 7*24*time.Hour || !got[0].GetAllow() {
		t.Fatalf("--for 7d sent %v, want an approval for 168h", got)
	}
}

// exec with an agent name the daemon does not know, or with no daemon, must fail before the command runs.
func TestExecChecksAgentBeforeRunning(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("uses sh")
	}
	marker := filepath.Join(shortTempDir(t), "ran")
	cmdline := []string{"sh", "-c", "touch " + marker}
	sock := fakeDaemon(t, &fakeAdmin{agents: []string{"coder", "reviewer"}})
	_, err := runExec(context.Background(), &globals{socket: sock}, "nosuch", nil, time.Second, cmdline)
	if err == nil || !strings.Contains(err.Error(), `no agent named "nosuch"`) || !strings.Contains(err.Error(), "coder, reviewer") {
		t.Errorf("unknown agent: %v, want it named with the configured ones", err)
	}
	_, err = runExec(context.Background(), &globals{socket: filepath.Join(shortTempDir(t), "none.sock")}, "coder", nil, time.Second, cmdline)
	if err == nil || !strings.Contains(err.Error(), "agentidd is not running") {
		t.Errorf("no daemon: %v, want 'agentidd is not running'", err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the command ran although exec refused")
	}
}

// A command that is done before the daemon could register it (`agentidd exec -- false`) gives its own exit code.
func TestExecQuickCommandKeepsItsExitCode(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("uses sh")
	}
	sock := fakeDaemon(t, &fakeAdmin{agents: []string{"coder"}, register: func(in *agentidv1.RegisterLaunchRequest) (*agentidv1.RegisterLaunchResponse, error) {
		time.Sleep(300 * time.Millisecond) // the command has exited by now, as a real daemon finds it
		return nil, status.Errorf(codes.FailedPrecondition, "cannot inspect pid %d: it exited or is not visible", in.GetRootPid())
	}})
	code, err := runExec(context.Background(), &globals{socket: sock}, "coder", nil, time.Second, []string{"sh", "-c", "exit 3"})
	if err != nil || code != 3 {
		t.Fatalf("exec -- sh -c 'exit 3': code %d, err %v; want 3 and no error", code, err)
	}
}

// writeConfig writes a valid config with a file secret store in a fresh directory and returns its path and state dir.
func writeConfig(t *testing.T) (path, stateDir string) {
	t.Helper()
	dir := shortTempDir(t)
	stateDir = filepath.Join(dir, "state")
	path = filepath.Join(dir, "config.toml")
	toml := `authority = "https://login.microsoftonline.com/7f3c2a10-5b8e-4c1d-9a6f-2e4b8d0c1a93"
client_id = "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a"
blueprint_app_id = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
secret_store = "file"
state_dir = "` + filepath.ToSlash(stateDir) + `"
`
	if err := os.WriteFile(path, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, stateDir
}

// secret set under another id than the config's blueprint_app_id stored a credential the daemon never reads, and said
// "stored"; without --blueprint it must use the configured one.
func TestSecretSetNamesTheConfiguredBlueprint(t *testing.T) {
	cfgPath, stateDir := writeConfig(t)
	_, err := runCLI(t, "s3cret", "--config", cfgPath, "secret", "set", "--blueprint", "0000aaaa-0000-4000-8000-000000000000")
	if err == nil || !strings.Contains(err.Error(), "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d") {
		t.Errorf("secret set for another blueprint: %v, want a refusal naming the configured one", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(stateDir, "secrets")); len(entries) > 0 {
		for _, e := range entries {
			if strings.Contains(e.Name(), "0000aaaa") {
				t.Errorf("a credential for an unconfigured blueprint was stored: %s", e.Name())
			}
		}
	}
	out, err := runCLI(t, "s3cret", "--config", cfgPath, "secret", "set")
	if err != nil || !strings.Contains(out, "blueprint/a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d") {
		t.Fatalf("secret set without --blueprint: %v\n%s", err, out)
	}
	out, err = runCLI(t, "s3cret", "--config", cfgPath, "secret", "set", "--blueprint", "A1B2C3D4-E5F6-4A7B-8C9D-0E1F2A3B4C5D")
	if err != nil || !strings.Contains(out, "blueprint/a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d") {
		t.Fatalf("secret set with the configured id in upper case: %v\n%s", err, out)
	}
}

// Every command says what it does in --help's command list.
func TestEveryCommandHasAShortHelp(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if !c.Hidden && c.Short == "" {
			t.Errorf("%q has no Short help: `agentidd %s --help` lists it with an empty description", c.CommandPath(), c.Parent().Name())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRoot())
}

// audit tail -n 0 or a negative count printed the whole default tail instead of refusing.
func TestAuditTailRefusesNonPositiveCount(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "none.sock")
	for _, n := range []string{"0", "-5"} {
		_, err := runCLI(t, "", "--socket", sock, "audit", "tail", "-n", n)
		if err == nil || !strings.Contains(err.Error(), "at least 1") {
			t.Errorf("audit tail -n %s: %v, want a refusal", n, err)
		}
	}
}

// consent reset said nothing at all on success.
func TestConsentResetConfirms(t *testing.T) {
	sock := fakeDaemon(t, &fakeAdmin{})
	out, err := runCLI(t, "", "--socket", sock, "consent", "reset")
	if err != nil || !strings.Contains(out, "forgotten") {
		t.Fatalf("consent reset: %v, output %q", err, out)
	}
}

// Garbage arguments get a message about the argument, not gRPC's marshaling or message-size error.
func TestGarbageArgumentsExplained(t *testing.T) {
	sock := fakeDaemon(t, &fakeAdmin{decide: func(in *agentidv1.DecideConsentRequest) (*agentidv1.DecideConsentResponse, error) {
		return nil, status.Errorf(codes.NotFound, "no pending consent request %s", in.GetId())
	}})
	_, err := runCLI(t, "", "--socket", sock, "consent", "approve", "cr_\xff\xfe")
	if err == nil || strings.Contains(err.Error(), "grpc") || !strings.Contains(err.Error(), "UTF-8") {
		t.Errorf("non-UTF-8 request id: %v", err)
	}
	_, err = runCLI(t, "", "--socket", sock, "consent", "approve", strings.Repeat("a", 100_000))
	if err == nil || strings.Contains(err.Error(), "grpc") || !strings.Contains(err.Error(), "too large") {
		t.Errorf("100 kB request id: %v", err)
	}
}

// reset must refuse while a daemon answers: one serving degraded holds no lock on the state file, so the lock check
// alone let a reset through and the daemon went on refusing everything.
func TestResetRefusesWhileADaemonAnswers(t *testing.T) {
	cfgPath, stateDir := writeConfig(t)
	sock := fakeDaemon(t, &fakeAdmin{})
	_, err := runCLI(t, "", "--config", cfgPath, "--socket", sock, "reset", "--yes")
	if err == nil || !strings.Contains(err.Error(), "running (pid 4242") {
		t.Fatalf("reset with a daemon answering: %v, want a refusal naming its pid", err)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "state.db")); err == nil {
		t.Error("reset wrote a state file although it refused")
	}
	// A daemon that refuses this CLI (an upgraded binary fails the admin gate) is still a running daemon.
	refusing := fakeDaemon(t, &refusingAdmin{})
	if _, err := runCLI(t, "", "--config", cfgPath, "--socket", refusing, "reset", "--yes"); err == nil || !strings.Contains(err.Error(), "a daemon answers") {
		t.Fatalf("reset with a daemon refusing Status: %v, want a refusal", err)
	}
	out, err := runCLI(t, "", "--config", cfgPath, "--socket", filepath.Join(shortTempDir(t), "none.sock"), "reset", "--yes")
	if err != nil {
		t.Fatalf("reset with no daemon: %v\n%s", err, out)
	}
}

// refusingAdmin answers every call PERMISSION_DENIED, as the admin gate does to a binary other than the daemon's.
type refusingAdmin struct {
	agentidv1.UnimplementedAdminServer
}

func (refusingAdmin) Status(context.Context, *agentidv1.StatusRequest) (*agentidv1.StatusResponse, error) {
	return nil, status.Error(codes.PermissionDenied, "not the agentidd binary")
}

// A degraded daemon refuses login, so status must not tell the user to run it.
func TestDegradedStatusDoesNotSuggestLogin(t *testing.T) {
	sock := fakeDaemon(t, &fakeAdmin{})
	out, err := runCLI(t, "", "--socket", sock, "status")
	if err != nil || !strings.Contains(out, "DEGRADED") || strings.Contains(out, "agentidd login") {
		t.Fatalf("status of a degraded daemon: %v\n%s", err, out)
	}
}

// status --json prints every field, false and zero included, and timestamps as RFC 3339.
func TestStatusJSONPrintsEveryField(t *testing.T) {
	sock := fakeDaemon(t, &fakeAdmin{})
	out, err := runCLI(t, "", "--socket", sock, "status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, out)
	}
	if st["online"] != false || st["signed_in"] != false || st["cached_tokens"] != float64(0) || st["pid"] != float64(4242) {
		t.Fatalf("status --json of an offline, signed-out daemon:\n%s", out)
	}
	if _, ok := st["next_refresh"]; !ok {
		t.Fatalf("status --json leaves out next_refresh:\n%s", out)
	}
}

func TestVersionFlag(t *testing.T) {
	out, err := runCLI(t, "", "--version")
	if err != nil || !strings.HasPrefix(out, "agentidd version dev") {
		t.Fatalf("--version: %v\n%s", err, out)
	}
}

// logout and secret rm said "Signed out" and "removed" when there was nothing to sign out or remove.
func TestNothingToUndoIsSaid(t *testing.T) {
	sock := fakeDaemon(t, &fakeAdmin{})
	if out, err := runCLI(t, "", "--socket", sock, "logout"); err != nil || !strings.Contains(out, "Nobody was signed in") {
		t.Errorf("logout with nobody signed in: %v\n%s", err, out)
	}
	cfgPath, _ := writeConfig(t)
	if out, err := runCLI(t, "", "--config", cfgPath, "secret", "rm"); err != nil || !strings.Contains(out, "nothing stored under") {
		t.Errorf("secret rm with nothing stored: %v\n%s", err, out)
	}
	if _, err := runCLI(t, "s3cret", "--config", cfgPath, "secret", "set"); err != nil {
		t.Fatal(err)
	}
	if out, err := runCLI(t, "", "--config", cfgPath, "secret", "rm"); err != nil || !strings.Contains(out, "removed blueprint/") {
		t.Errorf("secret rm of a stored credential: %v\n%s", err, out)
	}
}
