package broker

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentidd/agentidd/internal/attest"
	"github.com/agentidd/agentidd/internal/audit"
	"github.com/agentidd/agentidd/internal/cache"
	"github.com/agentidd/agentidd/internal/config"
	"github.com/agentidd/agentidd/internal/consent"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// revokeFixture is a broker whose consent manager purges as the daemon's does (cache by grant, then the bookkeeping),
// and whose cache reads its clock through onClock, so that a test can revoke at a chosen point of a call.
type revokeFixture struct {
	*fixture
	onClock atomic.Pointer[func()]
}

func newRevokeFixture(t *testing.T) *revokeFixture {
	t.Helper()
	cfg := &config.Config{MinTTL: config.Duration{Duration: time.Minute}, ConsentWaitMax: config.Duration{Duration: time.Minute},
		RateLimit: 1e9, Burst: 1e9,
		Agents: []config.Agent{{Name: testAgent, AppID: testAppID, Bindings: []config.Binding{{Exe: testExe, SHA256: testHash}}}}}
	log, err := audit.Open(filepath.Join(t.TempDir(), "audit.jsonl"), audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	f := &revokeFixture{fixture: &fixture{idp: &fakeIdP{}}}
	f.cm, err = consent.NewManager(consent.Options{OnRevoke: func(g consent.Grant, reason string) {
		f.c.PurgeGrant(g.ID, reason)
		f.b.ForgetGrant(g.ID)
	}})
	if err != nil {
		t.Fatal(err)
	}
	f.c = cache.New(cache.Options{
		Fetch: func(ctx context.Context, k cache.Key) (cache.Token, error) { return f.b.Fetch(ctx, k) },
		Now: func() time.Time {
			if fn := f.onClock.Load(); fn != nil {
				(*fn)()
			}
			return time.Now()
		},
	})
	ins := fakeInspector{}
	f.b = New(Options{Config: cfg, IdP: f.idp, Cache: f.c, Consent: f.cm, Audit: log, Attestor: attest.New(ins), Inspector: ins})
	return f
}

// approve asks once, as an agent would, and approves the request for d: it returns the grant.
func (f *revokeFixture) approve(t *testing.T, req *agentidv1.GetTokenRequest, d time.Duration) consent.Grant {
	t.Helper()
	if _, err := f.b.GetToken(peerCtx(testPID, testStart), req); reasonOf(err) != ReasonConsentPending {
		t.Fatalf("first request: %v", err)
	}
	g, err := f.cm.Decide(f.cm.Pending()[0].ID, true, d, consent.ViaTerminal)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// watch starts WatchToken for req; events and the stream's end arrive on the returned channels.
func (f *revokeFixture) watch(t *testing.T, req *agentidv1.GetTokenRequest) (<-chan *agentidv1.TokenEvent, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(peerCtx(testPID, testStart))
	t.Cleanup(cancel)
	stream := &watchStream{ctx: ctx, events: make(chan *agentidv1.TokenEvent, 16)}
	done := make(chan error, 1)
	go func() { done <- f.b.WatchToken(req, stream) }()
	return stream.events, done
}

// endsWithin waits for the stream to say the token is gone: a revocation event, or an error ending it. A token sent
// after revoked returned fails the test.
func endsWithin(t *testing.T, events <-chan *agentidv1.TokenEvent, done <-chan error, revoked <-chan struct{}, d time.Duration) {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case ev := <-events:
			if ev.GetRevoked() != nil {
				return
			}
			select {
			case <-revoked:
				t.Fatalf("a token was sent after its grant's revocation returned: expiring %v", ev.GetToken().GetExpiresAt().AsTime())
			default:
			}
		case err := <-done:
			if err != nil {
				return
			}
			for {
				select {
				case ev := <-events: // sent before the stream returned
					if ev.GetRevoked() != nil {
						return
					}
				default:
					t.Fatal("the stream ended without a revocation event or an error")
				}
			}
		case <-timeout:
			t.Fatalf("the stream neither sent a revocation nor ended within %v of the revocation", d)
		}
	}
}

// A revocation landing at any point of WatchToken's start reaches the stream: before the fix the stream subscribed
// only after its Get, so a grant revoked in between purged the token before anyone listened, and the stream stayed
// open, silent, with neither a token nor a revocation.
func TestWatchTokenRevokedWhileStarting(t *testing.T) {
	for at := 1; at <= 4; at++ {
		t.Run(fmt.Sprintf("at cache clock read %d", at), func(t *testing.T) {
			f := newRevokeFixture(t)
			req := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}
			g := f.approve(t, req, time.Hour)
			if _, err := f.b.GetToken(peerCtx(testPID, testStart), req); err != nil { // cached: the stream starts on a hit
				t.Fatal(err)
			}
			revoked := make(chan struct{})
			var reads atomic.Int64
			hook := func() {
				if reads.Add(1) == int64(at) {
					if _, err := f.cm.Revoke(g.ID, "revoked by the user"); err != nil {
						t.Error(err)
					}
					close(revoked)
				}
			}
			f.onClock.Store(&hook)
			events, done := f.watch(t, req)
			select {
			case <-revoked:
			case ev := <-events:
				// The start got through before the hook fired: revoke now.
				f.onClock.Store(nil)
				if ev.GetToken() == nil {
					t.Fatalf("first event %v, want the token", ev)
				}
				select {
				case <-revoked:
				default:
					if _, err := f.cm.Revoke(g.ID, "revoked by the user"); err != nil {
						t.Fatal(err)
					}
					close(revoked)
				}
			case err := <-done:
				f.onClock.Store(nil)
				<-revoked
				if err == nil {
					t.Fatal("the stream ended without an error")
				}
				return
			case <-time.After(5 * time.Second):
				t.Fatal("the stream neither started nor ended")
			}
			f.onClock.Store(nil)
			endsWithin(t, events, done, revoked, 2*time.Second)
		})
	}
}

// Two task-bound grants cover one cache key (the key holds no task). A stream watching under task B's grant must end
// when task B does, even though the token it holds was minted under task A's grant, which lives on; before the fix
// the purge of B's grant found no token indexed under it, the stream was not told, and it went on receiving every
// token refreshed for task A.
func TestWatchTokenEndsWithItsOwnGrant(t *testing.T) {
	f := newRevokeFixture(t)
	reqA := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}, TaskId: "task-a"}
	reqB := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}, TaskId: "task-b"}
	f.approve(t, reqA, consent.TaskOnly)
	if _, err := f.b.GetToken(peerCtx(testPID, testStart), reqA); err != nil {
		t.Fatal(err)
	}
	f.approve(t, reqB, consent.TaskOnly)
	events, done := f.watch(t, reqB)
	select {
	case ev := <-events:
		if ev.GetToken() == nil {
			t.Fatalf("first event %v, want the token", ev)
		}
	case err := <-done:
		t.Fatalf("watch: %v", err)
	}
	out, err := f.b.EndTask(peerCtx(testPID, testStart), &agentidv1.EndTaskRequest{TaskId: "task-b"})
	if err != nil || len(out.GetRevokedGrantIds()) != 1 {
		t.Fatalf("EndTask: %v %v", out, err)
	}
	revoked := make(chan struct{})
	close(revoked)
	// Task A's token is refreshed meanwhile; task B's stream must not get it.
	refreshed := make(chan struct{})
	go func() {
		defer close(refreshed)
		if _, err := f.b.GetToken(peerCtx(testPID, testStart), &agentidv1.GetTokenRequest{Agent: testAgent,
			Scopes: []string{testScope}, TaskId: "task-a", ForceRefresh: true}); err != nil {
			t.Errorf("task A after task B ended: %v", err)
		}
	}()
	endsWithin(t, events, done, revoked, 2*time.Second)
	<-refreshed // before the test's audit log is closed
}
