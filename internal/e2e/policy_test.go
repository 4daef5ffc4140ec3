package e2e

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// TestManagedPolicy: a policy that does not list the agent refuses it (PERMISSION_DENIED/POLICY); allowing it takes
// effect live; taking it away again revokes its grant and pushes the revocation to a watcher, without a restart.
func TestManagedPolicy(t *testing.T) {
	write := policyFile(t)
	const other = "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a"
	write(`allowed_agents = ["` + other + `"]` + "\n")
	e := newEnv(t, envOptions{})
	e.login()
	c := e.conn()
	req := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{emutest.ResourceScopeRead}}

	_, err := c.Agent.GetToken(context.Background(), req)
	if status.Code(err) != codes.PermissionDenied || client.Reason(err) != "POLICY" {
		t.Fatalf("agent outside the policy: %v / %q, want PermissionDenied / POLICY", err, client.Reason(err))
	}

	write(`allowed_agents = ["` + other + `", "` + emutest.AgentAppID + `"]` + "\n")
	waitFor(t, 5*time.Second, func() bool {
		_, err := c.Agent.GetToken(context.Background(), req)
		return client.Reason(err) == "CONSENT_PENDING"
	})
	e.tokenWithApproval(c, emutest.ResourceScopeRead)

	watch, err := c.Agent.WatchToken(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := watch.Recv(); err != nil || ev.GetToken() == nil {
		t.Fatalf("first watch event: %v %v", ev, err)
	}
	write(`allowed_agents = ["` + other + `"]` + "\n")
	ev, err := watch.Recv()
	if err != nil || ev.GetRevoked() == nil {
		t.Fatalf("watcher did not get the revocation: %v %v", ev, err)
	}
	if out := e.cli("grants"); out != "no grants\n" {
		t.Errorf("grants after the policy took the agent away:\n%s", out)
	}
}

// TestManagedPolicyNarrowsLive: a policy reload that stops allowing a resource takes that resource's tokens out of
// the cache and the store and tells their watchers at once (the grant stays, unusable while the policy says no); a
// lower max_grant shortens the grants already given.
func TestManagedPolicyNarrowsLive(t *testing.T) {
	write := policyFile(t)
	write(`allowed_resources = ["` + emutest.ResourceAppIDURI + `"]` + "\n")
	e := newEnv(t, envOptions{})
	e.login()
	c := e.conn()
	e.tokenWithApproval(c, emutest.ResourceScopeRead) // approved for 1h
	req := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{emutest.ResourceScopeRead}}
	watchCtx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a missing revocation fails, not hangs
	defer cancel()
	watch, err := c.Agent.WatchToken(watchCtx, req)
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := watch.Recv(); err != nil || ev.GetToken() == nil {
		t.Fatalf("first watch event: %v %v", ev, err)
	}

	if st, _ := lifecycleStatus(t, e); st["cached_tokens"] != float64(1) {
		t.Fatalf("cached tokens before the reload: %v, want 1", st["cached_tokens"])
	}
	reloaded := time.Now()
	write(`allowed_resources = ["api://somewhere-else.example"]` + "\nmax_grant = \"10m\"\n")
	ev, err := watch.Recv()
	if err != nil || ev.GetRevoked() == nil || !strings.Contains(ev.GetRevoked().GetReason(), "managed policy") {
		t.Fatalf("watcher after the policy dropped the resource: %v %v, want a revocation naming the policy", ev, err)
	}
	if _, err := c.Agent.GetToken(context.Background(), req); status.Code(err) != codes.PermissionDenied || client.Reason(err) != "POLICY" {
		t.Errorf("GetToken for the dropped resource: %v / %q, want PermissionDenied / POLICY", err, client.Reason(err))
	}
	if st, _ := lifecycleStatus(t, e); st["cached_tokens"] != float64(0) {
		t.Errorf("cached tokens after the policy dropped their resource: %v, want 0", st["cached_tokens"])
	}
	// The 1h grant now ends within the 10-minute cap.
	out := e.cli("grants")
	m := regexp.MustCompile(` until (\S+) via `).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("grants after the reload:\n%s", out)
	}
	until, err := time.Parse(time.RFC3339, m[1])
	if err != nil {
		t.Fatal(err)
	}
	if limit := reloaded.Add(10*time.Minute + 5*time.Second); until.After(limit) {
		t.Errorf("grant ends %v, want by %v (max_grant 10m)", until, limit)
	}
	// Nothing for the dropped resource survives a restart either.
	e.stopDaemon()
	e.startDaemon()
	if st, _ := lifecycleStatus(t, e); st["cached_tokens"] != float64(0) {
		t.Errorf("cached tokens restored after a restart: %v, want 0", st["cached_tokens"])
	}
}

// policyFile points AGENTIDD_POLICY at a new file and returns how to replace its text, by rename, the way deployment
// tools replace files.
func policyFile(t *testing.T) func(text string) {
	t.Helper()
	policy := filepath.Join(t.TempDir(), "policy.toml")
	t.Setenv("AGENTIDD_POLICY", policy)
	return func(text string) {
		t.Helper()
		tmp := policy + ".tmp"
		if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, policy); err != nil {
			t.Fatal(err)
		}
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
