package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestChangedBinaryIsRefused: an agent bound by path and SHA-256 is attested while its binary is unchanged, and refused
// as NOT_ATTESTED (naming the path and the hash prefixes) once one byte of the file changes.
func TestChangedBinaryIsRefused(t *testing.T) {
	_, demo := binaries(t)
	dir := t.TempDir()
	bound := filepath.Join(dir, "bound-agent")
	raw, err := os.ReadFile(demo)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bound, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256File(t, bound)
	e := boundAgentEnv(t, bound)
	// Attested: it gets as far as asking the user.
	if out := runAgent(e, bound); !strings.Contains(out, "CONSENT_PENDING") {
		t.Fatalf("unchanged binary: %s", out)
	}
	// One byte appended: the ELF still runs, but it is no longer the approved binary.
	if err := os.WriteFile(bound, append(raw, 0), 0o755); err != nil {
		t.Fatal(err)
	}
	out := runAgent(e, bound)
	if !strings.Contains(out, "NOT_ATTESTED") || !strings.Contains(out, bound) || !strings.Contains(out, sum[:12]) {
		t.Fatalf("changed binary: %s", out)
	}
}

// TestBindMountedImpostorIsRefused: a process in its own mount namespace (an unprivileged user namespace is enough)
// bind-mounts another program over a bound agent's path and execs it. The daemon, reading the path in its own
// namespace, would find the bound file and its hash; it must hash the image the process actually runs.
func TestBindMountedImpostorIsRefused(t *testing.T) {
	if err := exec.Command("unshare", "-rm", "true").Run(); err != nil {
		t.Skipf("no unprivileged mount namespaces here (unshare -rm: %v)", err)
	}
	_, demo := binaries(t)
	dir := t.TempDir()
	bound, impostor := filepath.Join(dir, "bound-agent"), filepath.Join(dir, "impostor")
	raw, err := os.ReadFile(demo)
	if err != nil {
		t.Fatal(err)
	}
	// The impostor is the same program with one byte appended: it behaves identically, so only attestation tells them
	// apart.
	if err := os.WriteFile(bound, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(impostor, append(raw, 0), 0o755); err != nil {
		t.Fatal(err)
	}
	e := boundAgentEnv(t, bound)
	if out := runAgent(e, bound); !strings.Contains(out, "CONSENT_PENDING") {
		t.Fatalf("the bound binary itself: %s", out)
	}
	out := runAgent(e, "unshare", "-rm", "sh", "-c", `mount --bind "$0" "$1" && b=$1 && shift && exec "$b" "$@"`, impostor, bound)
	if !strings.Contains(out, "NOT_ATTESTED") || !strings.Contains(out, "bound-agent") {
		t.Fatalf("impostor mounted over the bound path: %s", out)
	}
}

// boundAgentEnv is a signed-in env with agent "bound-agent" bound to the file bound as it is now.
func boundAgentEnv(t *testing.T, bound string) *env {
	e := newEnv(t, envOptions{extraConfig: fmt.Sprintf(`
[[agent]]
name = "bound-agent"
app_id = "c7d8e9f0-a1b2-4c3d-9e4f-5a6b7c8d9e0f"
[[agent.binding]]
exe = %q
sha256 = %q
`, bound, sha256File(t, bound))})
	e.login()
	return e
}

// runAgent runs a demo agent asking for a token as bound-agent without waiting for consent (through command, when
// given, which execs the agent with the arguments appended) and returns what it printed.
func runAgent(e *env, command ...string) string {
	cmd := exec.Command(command[0], append(command[1:], "-agent", "bound-agent", "-consent-wait", "0s")...)
	cmd.Env = e.environ()
	out, _ := cmd.CombinedOutput()
	return string(out)
}
