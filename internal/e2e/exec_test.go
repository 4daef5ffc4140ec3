package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	// testdata/msi-probe is built with this module's go.mod, and go mod tidy does not look inside testdata: without this
	// import it would drop the module the probe needs.
	_ "github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// execScope is what the tests ask for: the resource's .default, i.e. every scope the agent is consented for in the
// emulator's directory (Files.Read). The App Service protocol only names a resource, and agentidd exec maps it so.
const execScope = emutest.ResourceAppIDURI + "/.default"

var (
	execProbeOnce sync.Once
	execProbePath string
	execProbeErr  error
)

// execProbe builds testdata/msi-probe: an agent that uses the unmodified Azure SDK for Go, or the agentidd client.
func execProbe(t *testing.T) string {
	t.Helper()
	execProbeOnce.Do(func() {
		dir, err := os.MkdirTemp("", "agentidd-e2e-probe-")
		if err != nil {
			execProbeErr = err
			return
		}
		execProbePath = filepath.Join(dir, "msi-probe")
		out, err := exec.Command("go", "build", "-o", execProbePath, "github.com/agentidd/agentidd/internal/e2e/testdata/msi-probe").CombinedOutput()
		if err != nil {
			execProbeErr = fmt.Errorf("go build msi-probe: %w\n%s", err, out)
		}
	})
	if execProbeErr != nil {
		t.Fatal(execProbeErr)
	}
	return execProbePath
}

// execCommand is `agentidd exec --agent test-agent -- args...` with the test env's config and socket.
func execCommand(e *env, args ...string) *exec.Cmd {
	cmd := exec.Command(e.agentidd, append([]string{"exec", "--agent", testAgent, "--wait", "20s", "--"}, args...)...)
	cmd.Env = e.environ()
	return cmd
}

type execProbeResult struct {
	Mode, Token, Error, Reason string
}

// execRunProbe runs msi-probe under agentidd exec and, if approve, approves the consent request it raises.
func execRunProbe(t *testing.T, e *env, approve bool, args ...string) execProbeResult {
	t.Helper()
	cmd := execCommand(e, append([]string{execProbe(t)}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if approve {
		e.approvePending("1h")
	}
	err := cmd.Wait()
	var r execProbeResult
	if jerr := json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), &r); jerr != nil {
		t.Fatalf("probe %v: %v; stdout %q stderr %q\ndaemon log:\n%s", args, err, stdout.String(), stderr.String(), e.log.String())
	}
	if err != nil && r.Error == "" {
		t.Fatalf("probe %v exited %v without an error line; stderr %q", args, err, stderr.String())
	}
	return r
}

func execCheckClaims(t *testing.T, e *env, r execProbeResult) {
	t.Helper()
	if r.Error != "" || r.Token == "" {
		t.Fatalf("%s: no token: %s\ndaemon log:\n%s", r.Mode, r.Error, e.log.String())
	}
	claims := verifyToken(t, e, r.Token)
	if claims["oid"] != emutest.DefaultUserOID || claims["azp"] != emutest.AgentAppID {
		t.Fatalf("%s: token names oid %v azp %v; want the user %s and the agent %s", r.Mode, claims["oid"], claims["azp"],
			emutest.DefaultUserOID, emutest.AgentAppID)
	}
}

// TestExecAzureSDKForGo: the unmodified azidentity credentials inside agentidd exec get the agent's OBO token, and so
// does a child that speaks to the socket directly, attested through the launch rather than an exe binding.
func TestExecAzureSDKForGo(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()

	execCheckClaims(t, e, execRunProbe(t, e, true, "mi", execScope))
	execCheckClaims(t, e, execRunProbe(t, e, false, "default", execScope))
	execCheckClaims(t, e, execRunProbe(t, e, false, "socket", testAgent, execScope))

	// The same probe outside agentidd exec is bound to nothing.
	outside := exec.Command(execProbe(t), "socket", testAgent, execScope)
	outside.Env = e.environ()
	out, err := outside.Output()
	var r execProbeResult
	_ = json.Unmarshal(out, &r)
	if err == nil || r.Reason != "NOT_ATTESTED" {
		t.Fatalf("probe outside exec: err %v, result %+v; want NOT_ATTESTED", err, r)
	}
	if !strings.Contains(e.log.String(), "launch ended") {
		t.Fatalf("the daemon never ended a launch:\n%s", e.log.String())
	}
}

// TestExecClientIDOfAnotherIdentity: an SDK under agentidd exec that asks for another identity's client_id gets an
// error, and nothing happens on its behalf: no consent prompt, no exchange, no "issued" record. Asking by the agent's
// own client ID works like asking for no ID.
func TestExecClientIDOfAnotherIdentity(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()
	before := e.counters().ByGrantType[lifecycleOBOGrant]

	r := execRunProbe(t, e, false, "mi-id", "00000000-0000-0000-0000-000000000001", execScope)
	if r.Error == "" || !strings.Contains(r.Error, "is not the identity of agent") {
		t.Fatalf("another client_id: %+v, want the daemon's refusal", r)
	}
	if out := e.cli("consent", "list"); !strings.Contains(out, "no pending consent requests") {
		t.Fatalf("another client_id raised a consent request:\n%s", out)
	}
	if n := e.counters().ByGrantType[lifecycleOBOGrant] - before; n != 0 {
		t.Fatalf("another client_id cost %d OBO exchanges", n)
	}
	if out := e.cli("audit", "tail", "-n", "20"); strings.Contains(out, "token.issued") || !strings.Contains(out, "token.denied") {
		t.Fatalf("audit after another client_id, want one denial and no issue:\n%s", out)
	}

	execCheckClaims(t, e, execRunProbe(t, e, true, "mi-id", emutest.AgentAppID, execScope))
}

// execShell starts `agentidd exec -- sh -c script args...` with its stdin and stdout on pipes of ours: os.Pipe, not
// StdoutPipe, so that reaping a killed exec does not close the command's output.
func execShell(t *testing.T, e *env, script string, args ...string) (*exec.Cmd, *bufio.Reader, *os.File) {
	t.Helper()
	cmd := execCommand(e, append([]string{"sh", "-c", script}, args...)...)
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	outW.Close()
	inR.Close()
	t.Cleanup(func() {
		inW.Close()
		outR.Close()
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd, bufio.NewReader(outR), inW
}

func execGet(t *testing.T, endpoint, header string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, endpoint+"?api-version=2019-08-01&resource="+emutest.ResourceAppIDURI, nil)
	if err != nil {
		t.Fatal(err)
	}
	if header != "" {
		req.Header.Set("X-IDENTITY-HEADER", header)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestExecEndpointRefusesOutsiders: this test process is not in the exec'd tree, so the right port and header are
// not enough; no header is refused before anything else; signals reach the command, its exit code comes back, and
// the endpoint is gone after it exits.
func TestExecEndpointRefusesOutsiders(t *testing.T) {
	e := newEnv(t, envOptions{})
	cmd, out, _ := execShell(t, e, `echo "$IDENTITY_ENDPOINT $IDENTITY_HEADER"; exec sleep 60`)
	line, err := out.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	endpoint, header, ok := strings.Cut(strings.TrimSpace(line), " ")
	if !ok || !strings.HasPrefix(endpoint, "http://127.0.0.1:") || len(header) != 64 {
		t.Fatalf("exec environment: %q", line)
	}
	if code, body := execGet(t, endpoint, header); code != http.StatusForbidden || strings.Contains(body, "access_token") {
		t.Fatalf("outsider with the header: %d %s; want 403", code, body)
	}
	if code, _ := execGet(t, endpoint, ""); code != http.StatusUnauthorized {
		t.Fatalf("no header: %d; want 401", code)
	}
	if code, _ := execGet(t, endpoint, strings.Repeat("0", 64)); code != http.StatusUnauthorized {
		t.Fatalf("wrong header: %d; want 401", code)
	}

	_ = cmd.Process.Signal(syscall.SIGTERM)
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 128+int(syscall.SIGTERM) {
		t.Fatalf("exec after SIGTERM: %v; want exit code %d (the command's, killed by the forwarded signal)", err, 128+int(syscall.SIGTERM))
	}
	if _, err := http.Get(endpoint); err == nil {
		t.Fatal("the endpoint still answers after the command exited")
	}
}

// TestExecLaunchEndsWithExec: when agentidd exec is killed (so it never says EndLaunch), the daemon ends the launch
// itself, and the command it started, still running, is no longer the agent.
func TestExecLaunchEndsWithExec(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()
	cmd, out, in := execShell(t, e, `while read x; do "$0" socket test-agent "$1"; done`, execProbe(t), execScope)
	ask := func() execProbeResult {
		t.Helper()
		if _, err := in.WriteString("go\n"); err != nil {
			t.Fatal(err)
		}
		line, err := out.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the probe's answer: %v", err)
		}
		var r execProbeResult
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("probe said %q", line)
		}
		return r
	}
	if r := ask(); r.Reason != "CONSENT_PENDING" {
		t.Fatalf("first call: %+v; want CONSENT_PENDING (attested through the launch, then asked the user)", r)
	}
	e.approvePending("1h")
	execCheckClaims(t, e, ask())

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(e.log.String(), "the agentidd exec process exited") {
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not end the launch of a killed exec:\n%s", e.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r := ask(); r.Reason != "NOT_ATTESTED" || r.Token != "" {
		t.Fatalf("after exec died: %+v; want NOT_ATTESTED", r)
	}
}

// TestExecAdminRefusedToTestBinary: the Admin service, launch RPCs included, answers only the agentidd binary.
func TestExecAdminRefusedToTestBinary(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.conn()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	calls := map[string]func() error{
		"Status": func() error { _, err := c.Admin.Status(ctx, &agentidv1.StatusRequest{}); return err },
		"DecideConsent": func() error {
			_, err := c.Admin.DecideConsent(ctx, &agentidv1.DecideConsentRequest{Id: "x", Allow: true})
			return err
		},
		"ListGrants": func() error { _, err := c.Admin.ListGrants(ctx, &agentidv1.ListGrantsRequest{}); return err },
		"RegisterLaunch": func() error {
			_, err := c.Admin.RegisterLaunch(ctx, &agentidv1.RegisterLaunchRequest{Agent: testAgent, RootPid: int32(os.Getpid())})
			return err
		},
		"LaunchToken": func() error {
			_, err := c.Admin.LaunchToken(ctx, &agentidv1.LaunchTokenRequest{LaunchId: "x", CallerPid: int32(os.Getpid()),
				Request: &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{execScope}}})
			return err
		},
		"WatchConsentRequests": func() error {
			s, err := c.Admin.WatchConsentRequests(ctx, &agentidv1.ListConsentRequestsRequest{})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		},
	}
	for name, call := range calls {
		if err := call(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("Admin/%s from the test binary: %v; want PermissionDenied", name, err)
		}
	}
}

// execTool finds a tool `make test` installs in .tools (also on PATH there).
func execTool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	p, _ := filepath.Abs(filepath.Join("..", "..", ".tools", name))
	if _, err := os.Stat(p); err != nil {
		t.Skipf("%s is not installed (make tools installs it into .tools/)", name)
	}
	return p
}

// TestExecGrpcurl: a generic gRPC client lists the services through reflection and calls health over the socket, given
// the guard header; without it the daemon refuses.
func TestExecGrpcurl(t *testing.T) {
	grpcurl := execTool(t, "grpcurl")
	e := newEnv(t, envOptions{})
	// grpcurl 1.9.3's -unix flag still dials TCP; a unix:// target goes through grpc-go's own unix resolver.
	target := "unix://" + e.socket
	run := func(args ...string) (string, error) {
		out, err := exec.Command(grpcurl, append([]string{"-plaintext"}, args...)...).CombinedOutput()
		return string(out), err
	}
	out, err := run("-H", "agentidd-client: 1", target, "list")
	if err != nil {
		t.Fatalf("grpcurl list: %v\n%s", err, out)
	}
	for _, svc := range []string{"agentid.v1.AgentIdentity", "agentid.v1.Admin", "grpc.health.v1.Health"} {
		if !strings.Contains(out, svc+"\n") {
			t.Errorf("reflection lists no %s:\n%s", svc, out)
		}
	}
	out, err = run("-H", "agentidd-client: 1", "-d", `{"service":"agentid.v1.AgentIdentity"}`, target, "grpc.health.v1.Health/Check")
	if err != nil || !strings.Contains(out, `"SERVING"`) {
		t.Fatalf("grpcurl health check: %v\n%s", err, out)
	}
	if out, err := run(target, "list"); err == nil || !strings.Contains(out, "agentidd-client") {
		t.Fatalf("reflection without the guard header: %v\n%s; want refused naming the header", err, out)
	}
}

// execNodeModules installs clients/node's dependencies (the npm client and registry are reachable in CI) once.
func execNodeModules(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		// make test installs node and sets AGENTIDD_REQUIRE_NODE=1, so a missing node fails there instead of skipping.
		if os.Getenv("AGENTIDD_REQUIRE_NODE") == "1" {
			t.Fatal("node is not installed but AGENTIDD_REQUIRE_NODE=1 (apt-get install -y nodejs npm)")
		}
		t.Skip("node is not installed: the Node client and @azure/identity tests need it")
	}
	dir, _ := filepath.Abs(filepath.Join("..", "..", "clients", "node"))
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@azure", "identity")); err != nil {
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
		}
	}
	return dir
}

// TestExecNode: the unmodified npm @azure/identity ManagedIdentityCredential inside agentidd exec gets the agent's
// token, and so does the Node client over the socket (the node process is bound through the launch).
func TestExecNode(t *testing.T) {
	dir := execNodeModules(t)
	e := newEnv(t, envOptions{})
	e.login()
	run := func(approve bool, extraEnv []string, args ...string) execProbeResult {
		t.Helper()
		cmd := execCommand(e, append([]string{"node"}, args...)...)
		cmd.Dir = dir
		cmd.Env = append(cmd.Env, extraEnv...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if approve {
			e.approvePending("1h")
		}
		err := cmd.Wait()
		var r execProbeResult
		if jerr := json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), &r); jerr != nil || err != nil {
			t.Fatalf("node %v: %v; stdout %q stderr %q\ndaemon log:\n%s", args, err, stdout.String(), stderr.String(), e.log.String())
		}
		return r
	}
	execCheckClaims(t, e, run(true, nil, "test/msi.js", execScope))
	execCheckClaims(t, e, run(false, []string{"AGENTIDD_TEST_AGENT=" + testAgent, "AGENTIDD_TEST_SCOPE=" + execScope}, "test/token.test.js"))
}
