package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestNodeClientErrorDetails: against the real daemon, a Node agent that asks without waiting for consent learns what
// the Go client's Reason, RetryDelay and Metadata tell a Go agent: CONSENT_PENDING, the 2 s RetryInfo and the pending
// request's id.
func TestNodeClientErrorDetails(t *testing.T) {
	dir := execNodeModules(t)
	e := newEnv(t, envOptions{})
	e.login()
	cmd := execCommand(e, "node", "test/token.test.js")
	cmd.Dir = dir
	cmd.Env = append(cmd.Env, "AGENTIDD_TEST_AGENT="+testAgent, "AGENTIDD_TEST_SCOPE="+execScope, "AGENTIDD_TEST_CONSENT_WAIT=0")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var r struct {
		Error, Reason string
		RetryDelayMs  int64
		Metadata      map[string]string
	}
	if jerr := json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), &r); jerr != nil || err == nil {
		t.Fatalf("node: %v; stdout %q stderr %q; want a refusal line and a failed exit\ndaemon log:\n%s", err, stdout.String(), stderr.String(), e.log.String())
	}
	if r.Reason != "CONSENT_PENDING" || r.RetryDelayMs != 2000 {
		t.Fatalf("node saw reason %q retry %d ms (%s); want CONSENT_PENDING, 2000", r.Reason, r.RetryDelayMs, r.Error)
	}
	m := regexp.MustCompile(`(?m)^request (\S+):`).FindStringSubmatch(e.cli("consent", "list"))
	if m == nil || r.Metadata["request_id"] != m[1] {
		t.Fatalf("node saw request_id %q; pending request %v", r.Metadata["request_id"], m)
	}
}

// TestNodeNpmTest runs the Node client's own tests (a fake server: the socket trust checks, the deadline, the default
// endpoint, request options and error details) as a Node developer does, with `npm test`; they must pass
// without a daemon or test environment of its own.
func TestNodeNpmTest(t *testing.T) {
	dir := execNodeModules(t)
	cmd := exec.Command("npm", "test")
	cmd.Dir = dir
	cmd.Env = os.Environ()
	for _, k := range []string{"AGENTIDD_TEST_AGENT", "AGENTIDD_TEST_SCOPE", "AGENTIDD_SOCKET"} {
		cmd.Env = slices.DeleteFunc(cmd.Env, func(kv string) bool { return strings.HasPrefix(kv, k+"=") })
	}
	out, err := cmd.CombinedOutput()
	if err != nil || !regexp.MustCompile(`(?m)^# pass [1-9]`).Match(out) || !strings.Contains(string(out), "# fail 0") {
		t.Fatalf("npm test: %v\n%s", err, out)
	}
}
