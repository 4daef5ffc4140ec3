package broker

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentidd/agentidd/internal/attest"
	"github.com/agentidd/agentidd/internal/audit"
	"github.com/agentidd/agentidd/internal/cache"
	"github.com/agentidd/agentidd/internal/config"
	"github.com/agentidd/agentidd/internal/consent"
	"github.com/agentidd/agentidd/internal/entra"
	"github.com/agentidd/agentidd/ipc"
	"github.com/agentidd/agentidd/platform"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

const (
	testExe    = "/opt/agents/bin/agent"
	testHash   = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	testAgent  = "agent"
	testAppID  = "c7d8e9f0-a1b2-4c3d-9e4f-5a6b7c8d9e0f"
	testScope  = "api://files.example/Files.Read"
	testUser   = "b2c4e6f8-1a3b-4c5d-8e7f-9a0b1c2d3e4f"
	testPID    = 4242
	testStart  = 777
	otherExe   = "/usr/bin/evil"
	otherPID   = 4343
	otherStart = 888
)

// fakeIdP counts exchanges; fakes are for the broker's own logic only (acceptance tests use the real emulator).
type fakeIdP struct {
	calls atomic.Int64
	err   error
}

func (f *fakeIdP) Account() *entra.Account { return &entra.Account{UPN: "ada@example", OID: testUser} }

func (f *fakeIdP) OnBehalfOf(context.Context, string, []string, string) (entra.Result, error) {
	n := f.calls.Add(1)
	if f.err != nil {
		return entra.Result{}, f.err
	}
	return entra.Result{AccessToken: fmt.Sprintf("token-%d", n), ExpiresAt: time.Now().Add(time.Hour)}, nil
}

func (f *fakeIdP) AppOnly(ctx context.Context, a string, s []string, c string) (entra.Result, error) {
	return f.OnBehalfOf(ctx, a, s, c)
}

type fakeInspector struct{}

func (fakeInspector) Inspect(pid int) (platform.Process, error) {
	switch pid {
	case testPID:
		return platform.Process{PID: pid, PPID: 1, ExePath: testExe, StartTime: testStart}, nil
	case otherPID:
		return platform.Process{PID: pid, PPID: 1, ExePath: otherExe, StartTime: otherStart}, nil
	}
	return platform.Process{}, platform.ErrNoSuchProcess
}

func (fakeInspector) ExeDigest(string) (string, error)  { return testHash, nil }
func (fakeInspector) Ancestors(int, int) ([]int, error) { return nil, nil }
func (fakeInspector) String() string                    { return "fake" }
func peerCtx(pid int, start uint64) context.Context {
	return ipc.ContextWithPeerForTest(context.Background(), ipc.NewPeerInfoForTest(0, 0, pid, "", start, nil))
}

type fixture struct {
	b   *Broker
	idp *fakeIdP
	c   *cache.Cache
	cm  *consent.Manager
}

func newFixture(tb testing.TB) *fixture {
	tb.Helper()
	return newFixtureWith(tb, fakeInspector{})
}

// newTestBroker is a broker for agents, with a fake IdP, a real cache, consent manager and audit log, and the
// processes described by ins.
func newTestBroker(tb testing.TB, agents []config.Agent, ins platform.ProcessInspector) *fixture {
	tb.Helper()
	cfg := &config.Config{MinTTL: config.Duration{Duration: time.Minute}, ConsentWaitMax: config.Duration{Duration: time.Minute},
		RateLimit: 1e9, Burst: 1e9, Agents: agents}
	log, err := audit.Open(filepath.Join(tb.TempDir(), "audit.jsonl"), audit.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { log.Close() })
	cm, err := consent.NewManager(consent.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	f := &fixture{idp: &fakeIdP{}, cm: cm}
	f.c = cache.New(cache.Options{Fetch: func(ctx context.Context, k cache.Key) (cache.Token, error) { return f.b.Fetch(ctx, k) }})
	f.b = New(Options{Config: cfg, IdP: f.idp, Cache: f.c, Consent: cm, Audit: log, Attestor: attest.New(ins), Inspector: ins})
	return f
}

// newFixtureWith is newFixture with the processes described by ins: testAgent bound to testExe, approved once.
func newFixtureWith(tb testing.TB, ins platform.ProcessInspector) *fixture {
	tb.Helper()
	f := newTestBroker(tb, []config.Agent{{Name: testAgent, AppID: testAppID, Bindings: []config.Binding{{Exe: testExe, SHA256: testHash}}}}, ins)
	b, cm := f.b, f.cm
	// Approve once, through the same path a user takes.
	_, err := b.GetToken(peerCtx(testPID, testStart), &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}})
	if reasonOf(err) != ReasonConsentPending {
		tb.Fatalf("first call: %v", err)
	}
	reqs := cm.Pending()
	if len(reqs) != 1 {
		tb.Fatalf("pending: %d", len(reqs))
	}
	if _, err := cm.Decide(reqs[0].ID, true, time.Hour, consent.ViaTerminal); err != nil {
		tb.Fatal(err)
	}
	return f
}

func TestCachedTokenServedWithoutIdP(t *testing.T) {
	f := newFixture(t)
	req := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}
	first, err := f.b.GetToken(peerCtx(testPID, testStart), req)
	if err != nil {
		t.Fatal(err)
	}
	second, err := f.b.GetToken(peerCtx(testPID, testStart), req)
	if err != nil {
		t.Fatal(err)
	}
	if first.GetSource() != agentidv1.TokenSource_TOKEN_SOURCE_IDP || second.GetSource() != agentidv1.TokenSource_TOKEN_SOURCE_CACHE {
		t.Errorf("sources %v then %v", first.GetSource(), second.GetSource())
	}
	if first.GetAccessToken() != second.GetAccessToken() || f.idp.calls.Load() != 1 {
		t.Errorf("second call reached the IdP (%d calls)", f.idp.calls.Load())
	}
	p := second.GetPrincipal()
	if p.GetUserOid() != testUser || p.GetAgentAppId() != testAppID || p.GetAgentName() != testAgent {
		t.Errorf("principal %+v", p)
	}
}

func TestRefusals(t *testing.T) {
	f := newFixture(t)
	gone := ipc.ContextWithPeerForTest(context.Background(), ipc.NewPeerInfoForTest(0, 0, testPID, "", testStart, func() error { return ipc.ErrPeerGone }))
	cases := []struct {
		name   string
		ctx    context.Context
		req    *agentidv1.GetTokenRequest
		code   codes.Code
		reason string
	}{
		{"other binary", peerCtx(otherPID, otherStart), &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}, codes.PermissionDenied, ReasonNotAttested},
		{"pid reused since accept", peerCtx(testPID, testStart+1), &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}, codes.PermissionDenied, ReasonPeerGone},
		{"peer exited", gone, &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}, codes.PermissionDenied, ReasonPeerGone},
		{"no peer", context.Background(), &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}, codes.PermissionDenied, ReasonNotAttested},
		{"unknown agent", peerCtx(testPID, testStart), &agentidv1.GetTokenRequest{Agent: "x", Scopes: []string{testScope}}, codes.NotFound, ReasonUnknownAgent},
		{"superset needs consent", peerCtx(testPID, testStart), &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope, "api://files.example/Files.Write"}}, codes.FailedPrecondition, ReasonConsentPending},
		{"min ttl too long", peerCtx(testPID, testStart), &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}, MinTtl: durationOf(13 * time.Hour)}, codes.InvalidArgument, ReasonInvalidArgument},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.b.GetToken(tc.ctx, tc.req)
			if status.Code(err) != tc.code || reasonOf(err) != tc.reason {
				t.Errorf("got %v / %q, want %v / %q", status.Code(err), reasonOf(err), tc.code, tc.reason)
			}
		})
	}
}

func TestIdPErrorMapping(t *testing.T) {
	cases := []struct {
		err    error
		code   codes.Code
		reason string
	}{
		{entra.ErrNotSignedIn, codes.Unauthenticated, ReasonSigninRequired},
		{&entra.Error{Class: entra.ClassTransient}, codes.Unavailable, ReasonIdPUnreachable},
		{&entra.Error{Class: entra.ClassPermanent, Subject: entra.SubjectUser, AADSTS: 50173}, codes.Unauthenticated, ReasonSigninRequired},
		{&entra.Error{Class: entra.ClassPermanent, Subject: entra.SubjectAgent, AADSTS: 7000112}, codes.PermissionDenied, ReasonAgentRejected},
		{&entra.Error{Class: entra.ClassPermanent, Subject: entra.SubjectConsent, AADSTS: 65001}, codes.PermissionDenied, ReasonIdPConsentRequired},
		{&entra.Error{Class: entra.ClassInteraction, Claims: `{"access_token":{}}`}, codes.FailedPrecondition, ReasonInteractionRequired},
		{&entra.Error{Class: entra.ClassInvalidRequest, AADSTS: 70011}, codes.InvalidArgument, ReasonInvalidArgument},
		{errors.New("boom"), codes.Internal, ReasonInternal},
	}
	for _, tc := range cases {
		err := idpError(tc.err, 0)
		if status.Code(err) != tc.code || reasonOf(err) != tc.reason {
			t.Errorf("%v: got %v / %q, want %v / %q", tc.err, status.Code(err), reasonOf(err), tc.code, tc.reason)
		}
	}
	if d := ipc.RetryDelay(idpError(&entra.Error{Class: entra.ClassTransient, RetryAfter: 30 * time.Second}, time.Second)); d != 30*time.Second {
		t.Errorf("Retry-After not honoured: %v", d)
	}
}

func TestTransientErrorKeepsServingCachedToken(t *testing.T) {
	f := newFixture(t)
	req := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}
	if _, err := f.b.GetToken(peerCtx(testPID, testStart), req); err != nil {
		t.Fatal(err)
	}
	f.idp.err = &entra.Error{Class: entra.ClassTransient}
	if _, err := f.b.GetToken(peerCtx(testPID, testStart), req); err != nil {
		t.Fatalf("cached token not served while the IdP is down: %v", err)
	}
	forced := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}, ForceRefresh: true}
	_, err := f.b.GetToken(peerCtx(testPID, testStart), forced)
	if status.Code(err) != codes.Unavailable || ipc.RetryDelay(err) <= 0 {
		t.Errorf("forced refresh with the IdP down: %v (retry %v)", err, ipc.RetryDelay(err))
	}
}

// BenchmarkGetTokenCached is the in-process cost of a cache hit: validation, attestation cache, rate limit, consent
// check, cache lookup, liveness and one buffered audit append. Allocations per call are reported.
func BenchmarkGetTokenCached(b *testing.B) {
	f := newFixture(b)
	ctx := peerCtx(testPID, testStart)
	req := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}
	if _, err := f.b.GetToken(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := f.b.GetToken(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

func durationOf(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

// TestRateLimitPerAgent: one agent over its rate is refused with a retry delay; another agent is not slowed down.
func TestRateLimitPerAgent(t *testing.T) {
	f := newFixture(t)
	cfg := *f.b.cfg.Load()
	cfg.RateLimit, cfg.Burst = 1, 3
	cfg.Agents = append(append([]config.Agent(nil), cfg.Agents...),
		config.Agent{Name: "other", AppID: "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a", Bindings: []config.Binding{{Exe: otherExe, SHA256: testHash}}})
	f.b.SetConfig(&cfg)
	req := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}
	for i := range 3 {
		if _, err := f.b.GetToken(peerCtx(testPID, testStart), req); err != nil {
			t.Fatalf("call %d within the burst: %v", i, err)
		}
	}
	_, err := f.b.GetToken(peerCtx(testPID, testStart), req)
	if status.Code(err) != codes.ResourceExhausted || reasonOf(err) != ReasonRateLimited || ipc.RetryDelay(err) <= 0 {
		t.Fatalf("over the rate: %v / %q / retry %v", status.Code(err), reasonOf(err), ipc.RetryDelay(err))
	}
	// The other agent's bucket is its own: it reaches consent (it has no grant), not the rate limit.
	_, err = f.b.GetToken(peerCtx(otherPID, otherStart), &agentidv1.GetTokenRequest{Agent: "other", Scopes: []string{testScope}})
	if reasonOf(err) != ReasonConsentPending {
		t.Fatalf("other agent: %v / %q, want CONSENT_PENDING", status.Code(err), reasonOf(err))
	}
}

func TestSweepKeyInfoKeepsCachedAndRecentKeys(t *testing.T) {
	f := newFixture(t)
	req := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}
	if _, err := f.b.GetToken(peerCtx(testPID, testStart), req); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(keyInfoIdle + time.Minute)
	f.b.now = func() time.Time { return later }
	if n := f.b.SweepKeyInfo(); n != 0 {
		t.Fatalf("swept %d entries of a cached key", n)
	}
	f.c.PurgeAll("test")
	if n := f.b.SweepKeyInfo(); n != 1 {
		t.Fatalf("swept %d entries of an idle, uncached key, want 1", n)
	}
	// The next request re-creates the bookkeeping and is served.
	if _, err := f.b.GetToken(peerCtx(testPID, testStart), req); err != nil {
		t.Fatalf("after the sweep: %v", err)
	}
}

func reasonOf(err error) string { return ipc.ErrorInfo(err).GetReason() }

// A refresh (or any fetch) for a key the managed policy stopped allowing mints nothing and lets the key go: the purge
// at reload removes what is cached, this covers what was in flight or raced it.
func TestFetchRefusesWhatThePolicyNoLongerAllows(t *testing.T) {
	f := newFixture(t)
	req := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}
	if _, err := f.b.GetToken(peerCtx(testPID, testStart), req); err != nil {
		t.Fatal(err)
	}
	var k cache.Key
	for _, e := range f.c.Snapshot() {
		k = e.Key
	}
	if _, err := f.b.Fetch(context.Background(), k); err != nil {
		t.Fatalf("Fetch for the cached key %+v before the policy changed: %v", k, err)
	}
	f.b.SetPolicy(&config.Policy{AllowedResources: []string{"api://elsewhere.example"}})
	before := f.idp.calls.Load()
	if _, err := f.b.Fetch(context.Background(), k); !errors.Is(err, ErrGrantGone) {
		t.Errorf("Fetch under a policy that refuses the resource = %v, want ErrGrantGone", err)
	}
	if f.idp.calls.Load() != before {
		t.Error("the IdP was asked for a token the policy refuses")
	}
}

func TestAgentInAncestry(t *testing.T) {
	f := newFixture(t) // testPID has been attested as testAgent
	if agent, ok := f.b.AgentInAncestry(testPID); !ok || agent != testAgent {
		t.Errorf("attested process: %q, %v; want %s", agent, ok, testAgent)
	}
	if agent, ok := f.b.AgentInAncestry(otherPID); ok {
		t.Errorf("a process never attested is taken for agent %q", agent)
	}
	_, revoke := f.b.attestor.RegisterLaunch(testAgent, otherPID, otherStart)
	if agent, ok := f.b.AgentInAncestry(otherPID); !ok || agent != testAgent {
		t.Errorf("launch root: %q, %v; want %s", agent, ok, testAgent)
	}
	revoke()
	if _, ok := f.b.AgentInAncestry(otherPID); ok {
		t.Error("an ended launch still counts")
	}
}

// A revocation that lands between a GetToken's consent check and its bookkeeping leaves keyInfo naming the revoked
// grant; Fetch must not mint under it.
func TestFetchRefusesARevokedGrant(t *testing.T) {
	f := newFixture(t)
	req := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}
	resp, err := f.b.GetToken(peerCtx(testPID, testStart), req)
	if err != nil {
		t.Fatal(err)
	}
	var k cache.Key
	for _, e := range f.c.Snapshot() {
		k = e.Key
	}
	// Revoke without the purge and ForgetGrant that follow in the daemon: the state of the race's window.
	if _, err := f.b.consent.Revoke(resp.GetGrantId(), "test"); err != nil {
		t.Fatal(err)
	}
	before := f.idp.calls.Load()
	if _, err := f.b.Fetch(context.Background(), k); !errors.Is(err, ErrGrantGone) {
		t.Errorf("Fetch under a revoked grant = %v, want ErrGrantGone", err)
	}
	if f.idp.calls.Load() != before {
		t.Error("the IdP was asked for a token under a revoked grant")
	}
}

func TestTooManyPendingIsNotADenial(t *testing.T) {
	err := consentError(&consent.DeniedError{Err: consent.ErrTooManyPending})
	if status.Code(err) != codes.ResourceExhausted || reasonOf(err) != ReasonRateLimited {
		t.Errorf("over the pending cap: %v (reason %s), want RESOURCE_EXHAUSTED/RATE_LIMITED", err, reasonOf(err))
	}
	if err := consentError(&consent.DeniedError{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a denial: %v, want PERMISSION_DENIED", err)
	}
}

// EndTask revokes grants, so it answers only a process attested as an agent, and only for that agent's grants.
func TestEndTaskNeedsAnAttestedCaller(t *testing.T) {
	f := newFixture(t)
	_, err := f.b.EndTask(peerCtx(otherPID, otherStart), &agentidv1.EndTaskRequest{TaskId: "t1"})
	if status.Code(err) != codes.PermissionDenied || reasonOf(err) != ReasonNotAttested {
		t.Errorf("EndTask from an unbound process: %v, want PERMISSION_DENIED/NOT_ATTESTED", err)
	}
	if _, err := f.b.EndTask(peerCtx(testPID, testStart), &agentidv1.EndTaskRequest{TaskId: "t1"}); err != nil {
		t.Errorf("EndTask from the agent: %v", err)
	}
}

// Two local agents sharing one Entra agent identity have their own grants, so they must have their own tokens: revoking
// one's grant purges its token and leaves the other's.
func TestAgentsSharingAnIdentityHaveTheirOwnTokens(t *testing.T) {
	f := newFixture(t)
	cfg := *f.b.cfg.Load()
	cfg.Agents = append(slices.Clone(cfg.Agents), config.Agent{Name: "twin", AppID: testAppID, Bindings: cfg.Agents[0].Bindings})
	f.b.SetConfig(&cfg)
	ctx := peerCtx(testPID, testStart)
	if _, err := f.b.GetToken(ctx, &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}); err != nil {
		t.Fatal(err)
	}
	twinReq := &agentidv1.GetTokenRequest{Agent: "twin", Scopes: []string{testScope}}
	if _, err := f.b.GetToken(ctx, twinReq); reasonOf(err) != ReasonConsentPending {
		t.Fatalf("twin's first call: %v, want its own consent request", err)
	}
	pending := f.b.consent.Pending()
	if len(pending) != 1 {
		t.Fatalf("pending: %+v", pending)
	}
	twinGrant, err := f.b.consent.Decide(pending[0].ID, true, time.Hour, consent.ViaTerminal)
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := f.b.GetToken(ctx, twinReq); err != nil || resp.GetSource() != agentidv1.TokenSource_TOKEN_SOURCE_IDP {
		t.Fatalf("twin's token: %v from %v, want its own from the IdP", err, resp.GetSource())
	}
	if n := len(f.c.Snapshot()); n != 2 {
		t.Fatalf("%d cached tokens, want one per local agent", n)
	}
	f.c.PurgeGrant(twinGrant.ID, "test")
	snap := f.c.Snapshot()
	if len(snap) != 1 || snap[0].Key.AgentName != testAgent {
		t.Fatalf("after revoking twin's grant: %+v, want only %s's token", snap, testAgent)
	}
}

func TestExecutedSinceAccept(t *testing.T) {
	recorded := func(dev, ino uint64) *ipc.PeerInfo {
		p := ipc.NewPeerInfoForTest(0, 0, testPID, "", testStart, nil)
		p.ExeDev, p.ExeIno, p.ExeRecorded = dev, ino, true
		return p
	}
	image := func(dev, ino uint64) platform.Process {
		return platform.Process{ImageID: platform.FileID{Dev: dev, Ino: ino}, HasImageID: true}
	}
	unread := ipc.NewPeerInfoForTest(0, 0, testPID, "", testStart, nil)
	unread.ExeUnread = true // non-dumpable at connect, say, then exec'd the bound agent
	tests := []struct {
		name string
		peer *ipc.PeerInfo
		proc platform.Process
		want bool
	}{
		{"same file", recorded(1, 100), image(1, 100), false},
		{"another file since", recorded(1, 100), image(1, 200), true},
		{"another device", recorded(1, 100), image(2, 100), true},
		// FUSE passes the server's inode numbers through: 0 is a real one, not "unknown".
		{"inode 0 at accept, another file since", recorded(39, 0), image(2, 247766), true},
		{"inode 0 both times", recorded(39, 0), image(39, 0), false},
		{"image unreadable now", recorded(1, 100), platform.Process{}, true},
		{"exe unreadable at accept", unread, image(1, 100), true},
		{"nothing recorded (Windows)", ipc.NewPeerInfoForTest(0, 0, testPID, "", testStart, nil), image(1, 200), false},
	}
	for _, tt := range tests {
		if got := ExecutedSinceAccept(tt.peer, tt.proc); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

// imageInspector is fakeInspector with the running image's identity, as Linux and macOS report it.
type imageInspector struct{ fakeInspector }

var boundImage = platform.FileID{Dev: 1, Ino: 100}

func (i imageInspector) Inspect(pid int) (platform.Process, error) {
	p, err := i.fakeInspector.Inspect(pid)
	p.ImageID, p.HasImageID = boundImage, true
	return p, err
}

// TestCachedAttestationDoesNotCoverAnEarlierConnection: a process connects (conn 1) while it runs an unbound program,
// hands that connection to a child, execs the bound agent and asks on a new connection (conn 2), which attests and
// fills the cache for its pid and start time. Conn 1 must not ride on that cached decision.
func TestCachedAttestationDoesNotCoverAnEarlierConnection(t *testing.T) {
	f := newFixtureWith(t, imageInspector{}) // its approval came over a connection of the bound agent
	req := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}
	agentConn := ipc.NewPeerInfoForTest(0, 0, testPID, "", testStart, nil)
	agentConn.ExeDev, agentConn.ExeIno, agentConn.ExeRecorded = boundImage.Dev, boundImage.Ino, true
	if _, err := f.b.GetToken(ipc.ContextWithPeerForTest(context.Background(), agentConn), req); err != nil {
		t.Fatalf("the bound agent's own connection: %v", err)
	}
	earlier := ipc.NewPeerInfoForTest(0, 0, testPID, "", testStart, nil)
	earlier.ExeDev, earlier.ExeIno, earlier.ExeRecorded = 1, 50, true // what the process ran when this connection was accepted
	_, err := f.b.GetToken(ipc.ContextWithPeerForTest(context.Background(), earlier), req)
	if status.Code(err) != codes.PermissionDenied || reasonOf(err) != ReasonNotAttested {
		t.Fatalf("a connection accepted before the exec: %v, want PERMISSION_DENIED/NOT_ATTESTED", err)
	}
}

func TestSameScopeSet(t *testing.T) {
	cases := []struct {
		a, b []string
		want bool
	}{
		{[]string{"r/A", "r/B"}, []string{"r/B", "r/A"}, true},
		{[]string{"r/A"}, []string{"r/A"}, true},
		{[]string{"r/A", "r/A"}, []string{"r/A", "r/B"}, false}, // same length, one a duplicate
		{[]string{"r/A"}, []string{"r/A", "r/B"}, false},
		{[]string{"r/A"}, []string{"r/a"}, false},
	}
	for _, c := range cases {
		if got := sameScopeSet(c.a, c.b); got != c.want {
			t.Errorf("sameScopeSet(%q, %q) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

// A prompt that timed out or was dismissed is not reported to the agent as the user's denial.
func TestConsentNotGivenSaysWhy(t *testing.T) {
	cases := []struct {
		err       error
		want, not string
	}{
		{&consent.DeniedError{RequestID: "r1", Reason: "nobody answered in time"}, "nobody answered in time", "denied"},
		{&consent.DeniedError{RequestID: "r1", Reason: "prompt dismissed"}, "prompt dismissed", "denied"},
		{&consent.DeniedError{RequestID: "r1", Remembered: true, Until: time.Now().Add(time.Hour), Reason: "denied by the user"},
			"denied by the user", "nobody"},
	}
	for _, c := range cases {
		err := consentError(c.err)
		msg := status.Convert(err).Message()
		if reasonOf(err) != ReasonConsentDenied || !strings.Contains(msg, c.want) || strings.Contains(msg, c.not) {
			t.Errorf("%v -> %q (%s), want CONSENT_DENIED saying %q and not %q", c.err, msg, reasonOf(err), c.want, c.not)
		}
	}
}

// No blueprint credential stored is the user's setup step to take: FAILED_PRECONDITION/CREDENTIAL_MISSING naming the
// command, not INTERNAL.
func TestMissingCredentialIsAPrecondition(t *testing.T) {
	f := newFixture(t)
	f.idp.err = fmt.Errorf("%w for blueprint b: run `agentidd secret set --blueprint b`", entra.ErrNoCredential)
	_, err := f.b.GetToken(peerCtx(testPID, testStart), &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}})
	if status.Code(err) != codes.FailedPrecondition || reasonOf(err) != ReasonCredentialMissing ||
		!strings.Contains(status.Convert(err).Message(), "agentidd secret set") {
		t.Fatalf("got %v / %s, want FAILED_PRECONDITION/CREDENTIAL_MISSING naming the command", err, reasonOf(err))
	}
}
