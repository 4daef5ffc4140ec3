package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

const testAgent = "test-agent"

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds agentidd and the demo agent once per test process.
func binaries(t testing.TB) (agentidd, demoAgent string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "agentidd-e2e-bin-")
		if buildErr != nil {
			return
		}
		// Readable and executable by other uids: the other-uid test runs the demo agent as nobody.
		_ = os.Chmod(binDir, 0o755)
		out, err := exec.Command("go", "build", "-o", binDir+"/", "github.com/agentidd/agentidd/cmd/agentidd", "github.com/agentidd/agentidd/examples/demo-agent",
			"github.com/agentidd/agentidd/internal/e2e/testdata/rawdial").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "agentidd"), filepath.Join(binDir, "demo-agent")
}

func sha256File(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

type envOptions struct {
	secretStore   string // "file" (default) or "os"
	tokenLifetime time.Duration
	extraConfig   string
	directory     string // emulator directory file; "" = the embedded default
}

// env is one emulator + one daemon on temp paths.
type env struct {
	t        testing.TB
	emu      *emutest.Emulator
	agentidd string
	demo     string
	dir      string
	config   string
	socket   string
	stateDir string
	daemon   *exec.Cmd
	done     chan error
	log      *emutest.LockedBuffer
	opts     envOptions
}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	if o.secretStore == "" {
		o.secretStore = "file"
	}
	agentidd, demo := binaries(t)
	// Short path: sun_path is 108 bytes and t.TempDir() names can be long.
	dir, err := os.MkdirTemp("", "aidd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &env{t: t, agentidd: agentidd, demo: demo, dir: dir, opts: o,
		config: filepath.Join(dir, "config.toml"), socket: filepath.Join(dir, "run", "agentidd.sock"), stateDir: filepath.Join(dir, "state")}
	e.emu = emutest.Start(t, emutest.Options{TokenLifetime: o.tokenLifetime, DirectoryFile: o.directory})
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if self, err = filepath.EvalSymlinks(self); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`authority = %q
client_id = %q
blueprint_app_id = %q
dev_ca_file = %q
secret_store = %q
state_dir = %q
socket = %q
%s

[[agent]]
name = %q
app_id = %q
display_name = "Test agent"
[[agent.binding]]
exe = %q
sha256 = %q

[[agent]]
name = "demo-agent"
app_id = %q
[[agent.binding]]
exe = %q
sha256 = %q
`, e.emu.Authority, emutest.PublicClientID, emutest.BlueprintAppID, e.emu.CAFile, o.secretStore, e.stateDir, e.socket, o.extraConfig,
		testAgent, emutest.AgentAppID, self, sha256File(t, self), emutest.AgentAppID, demo, sha256File(t, demo))
	if err := os.WriteFile(e.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	e.cliInput(emutest.BlueprintSecret, "secret", "set", "--blueprint", emutest.BlueprintAppID)
	e.startDaemon()
	return e
}

func (e *env) environ() []string {
	return append(os.Environ(), "AGENTIDD_CONFIG="+e.config, "AGENTIDD_SOCKET="+e.socket)
}

func (e *env) startDaemon() {
	e.t.Helper()
	if e.log == nil {
		e.log = &emutest.LockedBuffer{}
	}
	cmd := exec.Command(e.agentidd, "run", "--log-level", "debug")
	if cpu := os.Getenv("AGENTIDD_BENCH_DAEMON_CPU"); cpu != "" {
		// Pinned benchmarks (BENCHMARKS.md): the daemon on one core, the test process on the other via taskset.
		cmd = exec.Command("taskset", "-c", cpu, e.agentidd, "run", "--log-level", "debug")
	}
	cmd.Env = e.environ()
	cmd.Stderr = e.log
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.daemon, e.done = cmd, make(chan error, 1)
	go func() { e.done <- cmd.Wait() }()
	e.t.Cleanup(e.stopDaemon)
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := client.Dial(e.socket)
		if err == nil {
			// The test binary is not agentidd, so Admin answers PERMISSION_DENIED: any answer means it is up.
			_, err = c.Admin.Status(context.Background(), &agentidv1.StatusRequest{})
			c.Close()
			if status.Code(err) != codes.Unavailable {
				break
			}
		}
		select {
		case err := <-e.done:
			e.t.Fatalf("daemon exited at start: %v\n%s", err, e.log.String())
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("daemon did not come up\n%s", e.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stopDaemon sends SIGTERM and waits: a clean shutdown is part of what is tested.
func (e *env) stopDaemon() {
	if e.daemon == nil {
		return
	}
	_ = e.daemon.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-e.done:
		if err != nil {
			e.t.Errorf("daemon exited with %v after SIGTERM\n%s", err, e.log.String())
		}
	case <-time.After(10 * time.Second):
		_ = e.daemon.Process.Kill()
		e.t.Errorf("daemon did not stop within 10s of SIGTERM")
	}
	e.daemon = nil
	if _, err := os.Stat(e.socket); err == nil {
		e.t.Errorf("socket %s left behind after shutdown", e.socket)
	}
}

// cli runs the agentidd CLI and returns stdout; it fails the test on a non-zero exit.
func (e *env) cli(args ...string) string {
	e.t.Helper()
	return e.cliInput("", args...)
}

func (e *env) cliInput(stdin string, args ...string) string {
	e.t.Helper()
	out, err := e.cliErr(stdin, args...)
	if err != nil {
		e.t.Fatalf("agentidd %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// cliErr runs the CLI as the user would: from outside the test's process tree (see startCLI).
func (e *env) cliErr(stdin string, args ...string) (string, error) {
	out, wait, err := e.startCLI(strings.NewReader(stdin), args...)
	if err != nil {
		return "", err
	}
	b, _ := io.ReadAll(out)
	return string(b), wait()
}

// startCLI starts the CLI from outside the test's process tree and returns its output (stdout and stderr) and a wait
// that reports its exit status once the output is read to the end. The test process is also a bound agent, and the
// daemon refuses consent approvals and sign-ins from inside an agent's tree; a subshell its parent shell leaves behind
// is re-parented away from the test (the detaching SECURITY.md names as that check's limit). Its exit status comes
// back on fd 3; fd 4 carries stdin past sh, which gives a background job /dev/null.
func (e *env) startCLI(stdin io.Reader, args ...string) (io.Reader, func() error, error) {
	rcR, rcW, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		rcR.Close()
		rcW.Close()
		return nil, nil, err
	}
	cmd := exec.Command("sh", append([]string{"-c", `exec 4<&0; ("$0" "$@" <&4 4<&-; echo $? >&3) &`, e.agentidd}, args...)...)
	cmd.Env = e.environ()
	cmd.Stdin = stdin
	cmd.Stdout, cmd.Stderr = outW, outW
	cmd.ExtraFiles = []*os.File{rcW}
	err = cmd.Start()
	rcW.Close()
	outW.Close()
	if err != nil {
		rcR.Close()
		outR.Close()
		return nil, nil, err
	}
	wait := func() error {
		defer rcR.Close()
		defer outR.Close()
		if err := cmd.Wait(); err != nil {
			return err
		}
		rc, err := io.ReadAll(rcR) // EOF once the detached CLI's subshell has exited
		if err != nil {
			return err
		}
		if code := strings.TrimSpace(string(rc)); code != "0" {
			return fmt.Errorf("agentidd exited with status %q", code)
		}
		return nil
	}
	return outR, wait, nil
}

var codeRE = regexp.MustCompile(`open the page (\S+) and enter the code (\S+) `)

// login signs the default user in through the device-code page, as a person would.
func (e *env) login() {
	e.t.Helper()
	stdout, wait, err := e.startCLI(strings.NewReader(""), "login")
	if err != nil {
		e.t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	var rest strings.Builder
	found := false
	for sc.Scan() {
		line := sc.Text()
		rest.WriteString(line + "\n")
		if m := codeRE.FindStringSubmatch(line); m != nil {
			if err := e.emu.CompleteDeviceCode(m[1], m[2], emutest.DefaultUserUPN, emutest.DefaultUserPassword); err != nil {
				e.t.Fatalf("completing device code: %v", err)
			}
			found = true
		}
	}
	_, _ = io.Copy(io.Discard, stdout)
	if err := wait(); err != nil || !found || !strings.Contains(rest.String(), "Signed in as "+emutest.DefaultUserUPN) {
		e.t.Fatalf("login failed (%v):\n%s\ndaemon log:\n%s", err, rest.String(), e.log.String())
	}
}

func (e *env) conn() *client.Conn {
	e.t.Helper()
	c, err := client.Dial(e.socket)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// approvePending approves the single pending consent request through the terminal path.
func (e *env) approvePending(duration string) string {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	re := regexp.MustCompile(`(?m)^request (\S+):`)
	for {
		out := e.cli("consent", "list")
		if m := re.FindStringSubmatch(out); m != nil {
			args := []string{"consent", "approve", m[1]}
			if duration != "" {
				args = append(args, "--for", duration)
			}
			e.cli(args...)
			return m[1]
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no pending consent request appeared:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tokenWithApproval asks for a token, approving the consent prompt it raises.
func (e *env) tokenWithApproval(c *client.Conn, scopes ...string) *client.Issued {
	e.t.Helper()
	type result struct {
		tok *client.Issued
		err error
	}
	ch := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		tok, err := c.Token(ctx, testAgent, scopes, client.WithConsentWait(20*time.Second), client.WithJustification("e2e test"))
		ch <- result{tok, err}
	}()
	e.approvePending("1h")
	r := <-ch
	if r.err != nil {
		e.t.Fatalf("token after approval: %v\n%s", r.err, e.log.String())
	}
	return r.tok
}

// editConfig rewrites the config file the way editors and config tools do (a new file renamed over the old one) and
// waits until the daemon has reloaded it.
func (e *env) editConfig(edit func(string) string) {
	e.t.Helper()
	before := strings.Count(e.log.String(), `msg="config reloaded"`)
	raw, err := os.ReadFile(e.config)
	if err != nil {
		e.t.Fatal(err)
	}
	tmp := e.config + ".new"
	if err := os.WriteFile(tmp, []byte(edit(string(raw))), 0o600); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(tmp, e.config); err != nil {
		e.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(e.log.String(), `msg="config reloaded"`) == before {
		if time.Now().After(deadline) {
			e.t.Fatalf("the daemon did not reload its config:\n%s", e.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) counters() emutest.Counters {
	e.t.Helper()
	c, err := e.emu.Counters()
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}
