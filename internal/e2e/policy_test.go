package e2e

import (
	"context"
	"os"
	"path/filepath"
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
	policy := filepath.Join(t.TempDir(), "policy.toml")
	write := func(text string) {
		t.Helper()
		tmp := policy + ".tmp"
		if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, policy); err != nil { // the way deployment tools replace files
			t.Fatal(err)
		}
	}
	const other = "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a"
	write(`allowed_agents = ["` + other + `"]` + "\n")
	t.Setenv("AGENTIDD_POLICY", policy)
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
