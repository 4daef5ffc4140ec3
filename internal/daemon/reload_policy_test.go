package daemon_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

const policyAgent = "policy-agent"

// policyDaemon is the in-process daemon on one config and state directory, so that it can be restarted onto the
// grants it saved, with the managed policy at policy.
type policyDaemon struct {
	t       *testing.T
	emu     *emutest.Emulator
	cfgPath string
	socket  string
	policy  string
	stop    func()
}

func newPolicyDaemon(t *testing.T) *policyDaemon {
	t.Helper()
	d := &policyDaemon{t: t, emu: emutest.Start(t, emutest.Options{}), policy: filepath.Join(t.TempDir(), "policy.toml")}
	t.Setenv("AGENTIDD_POLICY", d.policy)
	d.cfgPath, d.socket = inProcessSetup(t, d.emu, policyAgent, "")
	return d
}

// start runs the daemon until stop (or the test's end) and returns a client once it answers.
func (d *policyDaemon) start() *client.Conn {
	d.t.Helper()
	var c *client.Conn
	c, d.stop = runInProcess(d.t, d.cfgPath, d.socket, nil)
	return c
}

// writePolicy writes the file in place, as an editor that does not rename would: the daemon may read it half written.
func (d *policyDaemon) writePolicy(text string) {
	d.t.Helper()
	if err := os.WriteFile(d.policy, []byte(text), 0o644); err != nil {
		d.t.Fatal(err)
	}
}

var policyRequest = &agentidv1.GetTokenRequest{Agent: policyAgent, Scopes: []string{emutest.ResourceScopeRead}}

// awaitPolicyAnswer polls GetToken until want says the policy now in force answered it. The daemon puts a policy's
// revocations into effect before it answers by it, so what want sees has had every revocation it will cause.
func awaitPolicyAnswer(t *testing.T, c *client.Conn, what string, want func(*agentidv1.GetTokenResponse, error) bool) (*agentidv1.GetTokenResponse, error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := c.Agent.GetToken(context.Background(), policyRequest)
		if want(resp, err) {
			return resp, err
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the daemon still answers %v / %q", what, err, client.Reason(err))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func refusedByPolicy(_ *agentidv1.GetTokenResponse, err error) bool {
	return status.Code(err) == codes.PermissionDenied && client.Reason(err) == "POLICY"
}

func notRefusedByPolicy(_ *agentidv1.GetTokenResponse, err error) bool {
	return !refusedByPolicy(nil, err)
}

func grantIDs(t *testing.T, c *client.Conn) []string {
	t.Helper()
	list, err := c.Admin.ListGrants(context.Background(), &agentidv1.ListGrantsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, g := range list.GetGrants() {
		ids = append(ids, g.GetId())
	}
	return ids
}

// brokenPolicy fails to parse: allowed_agents must be an array.
const brokenPolicy = `allowed_agents = "` + emutest.AgentAppID + `"` + "\n"

// TestPolicyBrokenKeepsGrants: a managed policy that cannot be read refuses every token (PERMISSION_DENIED/POLICY) and
// drops the cached ones, but revokes no grant, whether it is found at start or on a live reload: once the
// administrator fixes it, the agents it allows get tokens under their old grants without asking the user again. A
// readable policy that leaves the agent out still revokes its grant.
func TestPolicyBrokenKeepsGrants(t *testing.T) {
	d := newPolicyDaemon(t)
	c := d.start()
	signIn(t, c, d.emu)
	approve, stopApproving := context.WithCancel(context.Background())
	go lifecycleApprover(approve, c)
	req := &agentidv1.GetTokenRequest{Agent: policyAgent, Scopes: policyRequest.Scopes, ConsentWait: durationpb.New(10 * time.Second)}
	first, err := c.Agent.GetToken(context.Background(), req)
	stopApproving()
	if err != nil {
		t.Fatal(err)
	}
	grant := first.GetGrantId()

	// served checks that the fixed policy serves a token under the original grant, without a consent prompt (a
	// revoked grant would answer CONSENT_PENDING here: the request does not wait for consent).
	served := func(t *testing.T, when string) {
		t.Helper()
		resp, err := awaitPolicyAnswer(t, c, when, notRefusedByPolicy)
		if err != nil || resp.GetGrantId() != grant {
			t.Fatalf("%s: %v / %q (grant %q, want %q): the grant did not survive the broken policy",
				when, err, client.Reason(err), resp.GetGrantId(), grant)
		}
	}
	grantKept := func(t *testing.T, when string) {
		t.Helper()
		if ids := grantIDs(t, c); len(ids) != 1 || ids[0] != grant {
			t.Errorf("%s: grants %v, want [%s] kept", when, ids, grant)
		}
	}

	if !t.Run("live reload", func(t *testing.T) {
		d.writePolicy(brokenPolicy)
		awaitPolicyAnswer(t, c, "broken policy", refusedByPolicy)
		grantKept(t, "under the broken policy")
		st, err := c.Admin.Status(context.Background(), &agentidv1.StatusRequest{})
		if err != nil || st.GetCachedTokens() != 0 {
			t.Errorf("status under the broken policy: %v, cached tokens %d, want every token dropped", err, st.GetCachedTokens())
		}
		d.writePolicy(`allowed_agents = ["` + emutest.AgentAppID + `"]` + "\n")
		served(t, "after fixing the policy")
		grantKept(t, "after fixing the policy")
	}) {
		return
	}

	if !t.Run("at start", func(t *testing.T) {
		d.stop()
		d.writePolicy(brokenPolicy)
		c = d.start()
		awaitPolicyAnswer(t, c, "broken policy at start", refusedByPolicy)
		grantKept(t, "started under the broken policy")
		if err := os.Remove(d.policy); err != nil {
			t.Fatal(err)
		}
		served(t, "after removing the broken policy")
	}) {
		return
	}

	t.Run("readable policy leaves the agent out", func(t *testing.T) {
		const other = "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a"
		d.writePolicy(`allowed_agents = ["` + other + `"]` + "\n")
		awaitPolicyAnswer(t, c, "policy without the agent", refusedByPolicy)
		if ids := grantIDs(t, c); len(ids) != 0 {
			t.Errorf("grants %v after a readable policy left the agent out, want none", ids)
		}
	})
}
