package daemon_test

// The config and the managed policy are reloaded from file-system events wherever they live: under directories that
// do not exist yet, behind symlinks, in a directory that is deleted and made again. Each test waits at most 10 s per
// step, far less than the 30 s poll that backs the events up: what they check is that the events alone are enough.

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// awaitAnswer polls GetToken for req until want holds, for at most 10 s.
func awaitAnswer(t *testing.T, c *client.Conn, req *agentidv1.GetTokenRequest, what string, want func(error) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := c.Agent.GetToken(context.Background(), req)
		if want(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the daemon still answers %v / %q", what, err, client.Reason(err))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func unknownAgent(err error) bool {
	return status.Code(err) == codes.NotFound && client.Reason(err) == "UNKNOWN_AGENT"
}

func knownAgent(err error) bool { return !unknownAgent(err) }

func policyRefused(err error) bool { return refusedByPolicy(nil, err) }

func policyAllowed(err error) bool { return notRefusedByPolicy(nil, err) }

// excludingPolicy is a readable policy that leaves the test agent out.
const excludingPolicy = `allowed_agents = ["0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a"]` + "\n"

// allowingPolicy is a readable policy that allows the test agent.
const allowingPolicy = `allowed_agents = ["` + emutest.AgentAppID + `"]` + "\n"

// settle outlasts the daemon's debounce, so that it has handled one change before the next is made.
func settle() { time.Sleep(time.Second) }

func mustWrite(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestPolicyCreatedUnderMissingDirectories: the daemon starts where the policy's directory does not exist (a machine
// without a policy: no /etc/agentidd). An administrator creates the directories and the policy later; the running
// daemon applies it, and no longer applies it once the directories are gone again.
func TestPolicyCreatedUnderMissingDirectories(t *testing.T) {
	root := t.TempDir()
	policy := filepath.Join(root, "absent", "dir", "policy.toml")
	t.Setenv("AGENTIDD_POLICY", policy)
	emu := emutest.Start(t, emutest.Options{})
	cfgPath, socket := inProcessSetup(t, emu, policyAgent, "")
	c, _ := runInProcess(t, cfgPath, socket, nil)
	awaitAnswer(t, c, policyRequest, "no policy at start", policyAllowed)

	// One directory first (the watch moves down a level), then the rest at once with the file.
	if err := os.Mkdir(filepath.Join(root, "absent"), 0o755); err != nil {
		t.Fatal(err)
	}
	settle()
	if err := os.MkdirAll(filepath.Dir(policy), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, policy, excludingPolicy)
	awaitAnswer(t, c, policyRequest, "policy created under new directories", policyRefused)

	// The directories go: no policy. They come back with a policy: applied again.
	if err := os.RemoveAll(filepath.Join(root, "absent")); err != nil {
		t.Fatal(err)
	}
	awaitAnswer(t, c, policyRequest, "policy directories removed", policyAllowed)
	settle()
	if err := os.MkdirAll(filepath.Dir(policy), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, policy, excludingPolicy)
	awaitAnswer(t, c, policyRequest, "policy directories made again", policyRefused)
}

// TestPolicyDirectoryRecreated: the policy's directory is deleted and made again with a new policy (as a package
// manager or MDM agent may do); the daemon watches the new directory and applies the new policy, both when it sees
// the deletion first and when deletion and re-creation come at once.
func TestPolicyDirectoryRecreated(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "agentidd")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	policy := filepath.Join(dir, "policy.toml")
	mustWrite(t, policy, allowingPolicy)
	t.Setenv("AGENTIDD_POLICY", policy)
	emu := emutest.Start(t, emutest.Options{})
	cfgPath, socket := inProcessSetup(t, emu, policyAgent, "")
	c, _ := runInProcess(t, cfgPath, socket, nil)
	awaitAnswer(t, c, policyRequest, "allowing policy at start", policyAllowed)

	recreate := func(text string) {
		t.Helper()
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		mustWrite(t, policy, text)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	settle() // the daemon sees the directory go, and its watch on it die
	recreate(excludingPolicy)
	awaitAnswer(t, c, policyRequest, "directory made again with a policy leaving the agent out", policyRefused)

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	recreate(allowingPolicy)
	awaitAnswer(t, c, policyRequest, "directory removed and made again at once", policyAllowed)
}

// TestSymlinkedConfigTargetEdits: config.toml is a symlink into another directory (dotfiles, stow, home-manager). Edits
// of the target, in place or by renaming a new file over it, are reloaded; so is an edit of a new target after the link
// is re-pointed.
func TestSymlinkedConfigTargetEdits(t *testing.T) {
	emu := emutest.Start(t, emutest.Options{})
	self, sum := selfBinding(t)
	agent := func(name string) string {
		return "[[agent]]\nname = \"" + name + "\"\napp_id = \"" + emutest.AgentAppID + "\"\n[[agent.binding]]\nexe = \"" +
			self + "\"\nsha256 = \"" + sum + "\"\n"
	}
	cfgPath, socket := inProcessSetup(t, emu, lifecycleAgent, agent("in-place")+agent("renamed")+agent("repointed"))
	text, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	dotfiles := filepath.Join(t.TempDir(), "dotfiles", "agentidd")
	if err := os.MkdirAll(dotfiles, 0o700); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dotfiles, "config.toml")
	mustWrite(t, target, string(text))
	if err := os.Remove(cfgPath); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, cfgPath); err != nil {
		t.Fatal(err)
	}
	c, _ := runInProcess(t, cfgPath, socket, nil)
	request := func(name string) *agentidv1.GetTokenRequest {
		return &agentidv1.GetTokenRequest{Agent: name, Scopes: []string{emutest.ResourceScopeRead}}
	}
	for _, name := range []string{lifecycleAgent, "in-place", "renamed", "repointed"} {
		awaitAnswer(t, c, request(name), name+" at start", knownAgent)
	}
	without := func(name string) string {
		t.Helper()
		cut := strings.Replace(string(text), agent(name), "", 1)
		if cut == string(text) {
			t.Fatalf("agent %s not in the config", name)
		}
		text = []byte(cut)
		return cut
	}

	mustWrite(t, target, without("in-place"))
	awaitAnswer(t, c, request("in-place"), "target edited in place", unknownAgent)

	tmp := filepath.Join(dotfiles, ".config.toml.tmp")
	mustWrite(t, tmp, without("renamed"))
	if err := os.Rename(tmp, target); err != nil {
		t.Fatal(err)
	}
	awaitAnswer(t, c, request("renamed"), "target replaced by rename", unknownAgent)

	// The link is re-pointed (atomically, by renaming a new link over it) to an unchanged copy in a third directory;
	// then that copy is edited.
	elsewhere := filepath.Join(t.TempDir(), "config.toml")
	mustWrite(t, elsewhere, string(text))
	link := cfgPath + ".new"
	if err := os.Symlink(elsewhere, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(link, cfgPath); err != nil {
		t.Fatal(err)
	}
	settle()
	mustWrite(t, elsewhere, without("repointed"))
	awaitAnswer(t, c, request("repointed"), "new target edited after the link was re-pointed", unknownAgent)
	awaitAnswer(t, c, request(lifecycleAgent), "the agent left in the config", knownAgent)
}
