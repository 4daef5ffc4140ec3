package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/audit"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	"github.com/agentidd/agentidd/platform"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// refusalWindow is the daemon's refusalMemory, which this external test package cannot name.
const refusalWindow = 30 * time.Second

// missRequest is a GetToken that cannot be served from the cache: a claims challenge of its own (a key of its own) for
// even i, force_refresh for odd i.
func missRequest(i int) *agentidv1.GetTokenRequest {
	r := readRequest()
	if i%2 == 0 {
		r.Claims = fmt.Sprintf(`{"access_token":{"nbf":{"essential":true,"value":"%d"}}}`, 1700000000+i)
	} else {
		r.ForceRefresh = true
	}
	return r
}

func wantRefused(t *testing.T, what string, err error, code codes.Code, reason string) {
	t.Helper()
	if status.Code(err) != code || client.Reason(err) != reason {
		t.Fatalf("%s: %v / %q, want %v / %s", what, err, client.Reason(err), code, reason)
	}
}

// auditSince returns the audit records after sequence number seq (0: all of the last 1,000).
func auditSince(t *testing.T, c *client.Conn, seq uint64) []audit.Record {
	t.Helper()
	tail, err := c.Admin.AuditTail(context.Background(), &agentidv1.AuditTailRequest{N: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var out []audit.Record
	for _, line := range tail.GetLines() {
		var r audit.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		if r.Seq > seq {
			out = append(out, r)
		}
	}
	return out
}

func lastAuditSeq(t *testing.T, c *client.Conn) uint64 {
	t.Helper()
	var seq uint64
	for _, r := range auditSince(t, c, 0) {
		seq = max(seq, r.Seq)
	}
	return seq
}

func countPurges(records []audit.Record, match func(audit.Record) bool) int {
	n := 0
	for _, r := range records {
		if r.Event == audit.EventPurge && match(r) {
			n++
		}
	}
	return n
}

// tokenRequests counts the token-endpoint requests made for the test agent: its own OBO and app-only exchanges and
// the blueprint's exchange tokens for it.
func tokenRequests(t *testing.T, emu *emutest.Emulator) int {
	t.Helper()
	cn, err := emu.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return cn.ByClientID[emutest.AgentAppID] + cn.ByClientID[emutest.BlueprintAppID]
}

// TestAgentRefusalRemembered: an agent identity disabled at the IdP is refused once there; an agent retrying its
// misses is answered the same refusal from memory for refusalMemory, with one purge record rather than one per miss,
// and once the memory is over (the agent re-enabled meanwhile) the next request gets a token without a restart.
func TestAgentRefusalRemembered(t *testing.T) {
	clock := &jumpClock{}
	clock.resumeAt(time.Now())
	c, emu := lifecycleDaemonWith(t, lifecycleOptions{clock: clock.Now})
	approvedToken(t, c, readRequest(), 8*time.Hour) // the grant outlives the clock's jumps
	mark := lastAuditSeq(t, c)
	forAgent := func(r audit.Record) bool { return r.Agent.AppID == emutest.AgentAppID }

	emu.SetAgentEnabled(emutest.AgentAppID, false)
	emu.ResetCounters()
	refusedAt := clock.Now()
	const misses = 50
	for i := range misses {
		_, err := c.Agent.GetToken(context.Background(), missRequest(i))
		wantRefused(t, fmt.Sprintf("miss %d with the agent disabled", i), err, codes.PermissionDenied, "AGENT_REJECTED")
	}
	calls := tokenRequests(t, emu)
	purges := countPurges(auditSince(t, c, mark), forAgent)
	t.Logf("%d misses: %d token requests at the IdP, %d purge records", misses, calls, purges)
	if calls < 1 || calls > 2 {
		t.Errorf("%d token requests at the IdP for %d misses of a refused agent, want 1 or 2", calls, misses)
	}
	if purges != 1 {
		t.Errorf("%d purge records for %d misses of a refused agent, want 1", purges, misses)
	}

	// A burst at the rate limit: every caller gets the refusal, none ABORTED by a flood of purge epochs.
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Agent.GetToken(context.Background(), missRequest(misses+i))
			if status.Code(err) != codes.PermissionDenied || client.Reason(err) != "AGENT_REJECTED" {
				errs <- fmt.Errorf("burst miss %d: %v / %q", i, err, client.Reason(err))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := tokenRequests(t, emu); got != calls {
		t.Errorf("the burst of 200 misses made %d token requests at the IdP, want none", got-calls)
	}
	if got := countPurges(auditSince(t, c, mark), forAgent); got != 1 {
		t.Errorf("%d purge records after the burst, want 1", got)
	}

	// Re-enabled at the IdP, the agent is still refused from memory until the window ends...
	emu.SetAgentEnabled(emutest.AgentAppID, true)
	clock.resumeAt(refusedAt.Add(refusalWindow - 5*time.Second))
	_, err := c.Agent.GetToken(context.Background(), readRequest())
	wantRefused(t, "within the window after re-enabling", err, codes.PermissionDenied, "AGENT_REJECTED")
	if got := tokenRequests(t, emu); got != calls {
		t.Errorf("%d token requests within the window, want none", got-calls)
	}
	// ...and the next request after it reaches the IdP and gets a token.
	clock.resumeAt(refusedAt.Add(refusalWindow + 2*time.Second))
	resp, err := c.Agent.GetToken(context.Background(), readRequest())
	if err != nil {
		t.Fatalf("after the window, with the agent re-enabled: %v", err)
	}
	if resp.GetSource() != agentidv1.TokenSource_TOKEN_SOURCE_IDP || resp.GetAccessToken() == "" {
		t.Errorf("after the window: source %v, want a new token from the IdP", resp.GetSource())
	}
}

// TestUserRefusalRemembered: a user disabled at the IdP (AADSTS50057) is refused once there and from memory until
// the window ends; a revoked sign-in (AADSTS50173) likewise, until the user signs in again, which ends it at once.
func TestUserRefusalRemembered(t *testing.T) {
	clock := &jumpClock{}
	clock.resumeAt(time.Now())
	c, emu := lifecycleDaemonWith(t, lifecycleOptions{clock: clock.Now})
	approvedToken(t, c, readRequest(), 8*time.Hour)
	forUser := func(r audit.Record) bool { return r.User.OID == emutest.DefaultUserOID }
	const misses = 20
	refuseAll := func(what string) (calls, purges int) {
		t.Helper()
		mark := lastAuditSeq(t, c)
		emu.ResetCounters()
		for i := range misses {
			_, err := c.Agent.GetToken(context.Background(), missRequest(i))
			wantRefused(t, fmt.Sprintf("miss %d %s", i, what), err, codes.Unauthenticated, "SIGNIN_REQUIRED")
		}
		calls, purges = tokenRequests(t, emu), countPurges(auditSince(t, c, mark), forUser)
		t.Logf("%s: %d misses, %d token requests at the IdP, %d purge records", what, misses, calls, purges)
		if calls < 1 || calls > 2 {
			t.Errorf("%s: %d token requests at the IdP for %d misses, want 1 or 2", what, calls, misses)
		}
		if purges != 1 {
			t.Errorf("%s: %d purge records for %d misses, want 1", what, purges, misses)
		}
		return calls, purges
	}

	emu.SetUserEnabled(emutest.DefaultUserUPN, false)
	disabledAt := clock.Now()
	calls, _ := refuseAll("with the user disabled")
	emu.SetUserEnabled(emutest.DefaultUserUPN, true)
	clock.resumeAt(disabledAt.Add(refusalWindow + 2*time.Second))
	if _, err := c.Agent.GetToken(context.Background(), readRequest()); err != nil {
		t.Fatalf("after the window, with the user enabled again: %v", err)
	}
	if got := tokenRequests(t, emu); got != calls+1 {
		t.Errorf("%d token requests for the request after the window, want 1", got-calls)
	}

	emu.RevokeUserSessions(emutest.DefaultUserUPN)
	revokedAt := time.Now()
	refuseAll("with the sign-in revoked")
	// The emulator compares whole seconds: sign in after the revocation's second. The daemon's clock is not moved.
	time.Sleep(time.Until(revokedAt.Truncate(time.Second).Add(1100 * time.Millisecond)))
	signIn(t, c, emu)
	emu.ResetCounters()
	resp, err := c.Agent.GetToken(context.Background(), readRequest())
	if err != nil {
		t.Fatalf("right after signing in again: %v", err)
	}
	if resp.GetSource() != agentidv1.TokenSource_TOKEN_SOURCE_IDP || tokenRequests(t, emu) != 1 {
		t.Errorf("after signing in again: source %v, %d token requests; want one new exchange", resp.GetSource(), tokenRequests(t, emu))
	}
}

// TestConsentRefusalNotRemembered: a consent refusal (AADSTS65001) concerns one resource's scopes and is mended by an
// administrator at any moment, so every miss still asks the IdP, and consent granted again works at once.
func TestConsentRefusalNotRemembered(t *testing.T) {
	c, emu := lifecycleDaemonWith(t, lifecycleOptions{})
	approvedToken(t, c, readRequest(), time.Hour)
	emu.WithdrawConsent(emutest.AgentAppID, emutest.ResourceAppID)
	emu.ResetCounters()
	const misses = 3
	for i := range misses {
		_, err := c.Agent.GetToken(context.Background(), missRequest(i))
		wantRefused(t, fmt.Sprintf("miss %d with consent withdrawn", i), err, codes.PermissionDenied, "IDP_CONSENT_REQUIRED")
	}
	if got := tokenRequests(t, emu); got != misses {
		t.Errorf("%d token requests for %d misses refused for consent, want one each", got, misses)
	}
	emu.GrantConsent(emutest.AgentAppID, emutest.ResourceAppID, "Files.Read")
	if _, err := c.Agent.GetToken(context.Background(), readRequest()); err != nil {
		t.Errorf("with consent granted again: %v", err)
	}
}

// TestAgentRefusalEndsWithNewSecret: a blueprint credential refused by the IdP (AADSTS7000215) is remembered like any
// agent refusal, but `agentidd secret set` (which writes the secret store) ends it: the next request presents the new
// credential at once instead of waiting out the window.
func TestAgentRefusalEndsWithNewSecret(t *testing.T) {
	c, emu := lifecycleDaemonWith(t, lifecycleOptions{})
	approvedToken(t, c, readRequest(), time.Hour)
	st, err := c.Admin.Status(context.Background(), &agentidv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// lifecycleDaemonWith puts the socket in <dir>/run and the state, with the file secret store, in <dir>/state.
	secrets, err := platform.OpenSecretStore("file", filepath.Join(filepath.Dir(filepath.Dir(st.GetEndpoint())), "state"))
	if err != nil {
		t.Fatal(err)
	}
	setSecret := func(s string) {
		t.Helper()
		if err := secrets.Set(platform.BlueprintItem(emutest.BlueprintAppID), []byte(s)); err != nil {
			t.Fatal(err)
		}
	}

	setSecret("not-the-blueprint-secret")
	emu.ResetCounters()
	for i := range 10 {
		_, err := c.Agent.GetToken(context.Background(), missRequest(i))
		wantRefused(t, fmt.Sprintf("miss %d with a wrong blueprint secret", i), err, codes.PermissionDenied, "AGENT_REJECTED")
	}
	calls := tokenRequests(t, emu)
	t.Logf("10 misses with a wrong secret: %d token requests at the IdP", calls)
	if calls > 4 { // the first fetch presents the secret, reads it again and retries once
		t.Errorf("%d token requests at the IdP for 10 misses with a refused secret, want at most 4", calls)
	}

	setSecret(emutest.BlueprintSecret)
	resp, err := c.Agent.GetToken(context.Background(), readRequest())
	if err != nil {
		t.Fatalf("right after the secret was set again: %v", err)
	}
	if resp.GetSource() != agentidv1.TokenSource_TOKEN_SOURCE_IDP {
		t.Errorf("after the secret was set again: source %v, want a new token from the IdP", resp.GetSource())
	}
}
