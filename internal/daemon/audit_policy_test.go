package daemon_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentidd/agentidd/internal/audit"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// TestPolicyPurgeNamesAgentAndResource: a policy that narrows what an agent may reach drops its cached tokens, and the
// purge record says whose tokens for which resource went, not just how many.
func TestPolicyPurgeNamesAgentAndResource(t *testing.T) {
	d := newPolicyDaemon(t)
	c := d.start()
	signIn(t, c, d.emu)
	approve, stopApproving := context.WithCancel(context.Background())
	go lifecycleApprover(approve, c)
	req := &agentidv1.GetTokenRequest{Agent: policyAgent, Scopes: policyRequest.Scopes, ConsentWait: durationpb.New(10 * time.Second)}
	_, err := c.Agent.GetToken(context.Background(), req)
	stopApproving()
	if err != nil {
		t.Fatal(err)
	}
	mark := lastAuditSeq(t, c)

	d.writePolicy(`allowed_resources = ["api://elsewhere.example"]` + "\n")
	awaitPolicyAnswer(t, c, "policy without the resource", refusedByPolicy)

	var purges []audit.Record
	for _, r := range auditSince(t, c, mark) {
		if r.Event == audit.EventPurge {
			purges = append(purges, r)
		}
	}
	if len(purges) != 1 {
		t.Fatalf("%d purge records, want 1: %+v", len(purges), purges)
	}
	r := purges[0]
	if r.Agent.Name != policyAgent || r.Agent.AppID != emutest.AgentAppID || r.Resource != emutest.ResourceAppIDURI || r.User.OID == "" {
		t.Errorf("purge record %+v, want agent %s (%s), resource %s and the user", r, policyAgent, emutest.AgentAppID, emutest.ResourceAppIDURI)
	}
}
