package daemon_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// TestRemovingAnAgentKeepsItsTwinsGrant: two configured agents share one Entra agent identity. Removing one from the
// config revokes its grant and purges its tokens, and leaves the other's grant and cached token alone.
func TestRemovingAnAgentKeepsItsTwinsGrant(t *testing.T) {
	emu := emutest.Start(t, emutest.Options{})
	// The twin is declared in the extra config lines, ahead of the set-up's own agent, with the same binding.
	self, sum := selfBinding(t)
	twin := "[[agent]]\nname = \"twin\"\napp_id = \"" + emutest.AgentAppID + "\"\n[[agent.binding]]\nexe = \"" + self + "\"\nsha256 = \"" + sum + "\"\n"
	cfgPath, socket := inProcessSetup(t, emu, lifecycleAgent, twin)
	c, _ := runInProcess(t, cfgPath, socket, nil)
	signIn(t, c, emu)

	mine := approvedToken(t, c, readRequest(), time.Hour)
	twinReq := readRequest()
	twinReq.Agent = "twin"
	theirs := approvedToken(t, c, twinReq, time.Hour)
	if mine.GetGrantId() == theirs.GetGrantId() {
		t.Fatalf("the two agents share grant %s", mine.GetGrantId())
	}

	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgPath, []byte(strings.Replace(string(raw), twin, "", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	// Poll without a consent wait: a call that loaded the config just before the reload finds the twin's grant gone
	// and would otherwise wait out its 10 s for a consent decision, past this loop's deadline.
	poll := proto.Clone(twinReq).(*agentidv1.GetTokenRequest)
	poll.ConsentWait = nil
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := c.Agent.GetToken(context.Background(), poll)
		if status.Code(err) == codes.NotFound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the removed agent still answers: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Nor is a consent request left open for it (a poll that read the config just before the reload may have opened
	// one): approving it would grant a removed agent.
	open, err := c.Admin.ListConsentRequests(context.Background(), &agentidv1.ListConsentRequestsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range open.GetRequests() {
		if r.GetAgentName() == "twin" {
			t.Fatalf("a consent request for the removed twin is still open: %v", r)
		}
	}
	list, err := c.Admin.ListGrants(context.Background(), &agentidv1.ListGrantsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if gs := list.GetGrants(); len(gs) != 1 || gs[0].GetId() != mine.GetGrantId() {
		t.Fatalf("grants after removing the twin: %v, want only %s", gs, mine.GetGrantId())
	}
	// Served from the cache under the old grant: no consent request, no exchange.
	noWait := readRequest()
	noWait.ConsentWait = nil
	resp, err := c.Agent.GetToken(context.Background(), noWait)
	if err != nil || resp.GetSource() != agentidv1.TokenSource_TOKEN_SOURCE_CACHE || resp.GetGrantId() != mine.GetGrantId() {
		t.Fatalf("the remaining agent after the twin's removal: %v / %q, source %v", err, client.Reason(err), resp.GetSource())
	}
}
