package broker

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
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

// clockFixture is a broker and a running cache scheduler on a settable wall clock, with the fake IdP's failures
// classified transient.
type clockFixture struct {
	*revokeFixture
	mu   sync.Mutex
	now  time.Time
	down atomic.Bool // every exchange fails
}

func (f *clockFixture) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *clockFixture) set(t time.Time) {
	f.mu.Lock()
	f.now = t
	f.mu.Unlock()
}

func newClockFixture(t *testing.T) *clockFixture {
	t.Helper()
	cfg := &config.Config{MinTTL: config.Duration{Duration: time.Minute}, ConsentWaitMax: config.Duration{Duration: time.Minute},
		RateLimit: 1e9, Burst: 1e9,
		Agents: []config.Agent{{Name: testAgent, AppID: testAppID, Bindings: []config.Binding{{Exe: testExe, SHA256: testHash}}}}}
	log, err := audit.Open(filepath.Join(t.TempDir(), "audit.jsonl"), audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	f := &clockFixture{revokeFixture: &revokeFixture{fixture: &fixture{idp: &fakeIdP{}}}, now: time.Now().Round(0)}
	f.cm, err = consent.NewManager(consent.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f.c = cache.New(cache.Options{
		Fetch: func(ctx context.Context, k cache.Key) (cache.Token, error) {
			if f.down.Load() {
				return cache.Token{}, errors.New("fake: network down")
			}
			return f.b.Fetch(ctx, k)
		},
		Now:      f.Now,
		Classify: func(error) cache.Class { return cache.Transient },
		Jitter:   -1,
		// The scheduler looks at the settable clock every few milliseconds instead of sleeping up to 5 s.
		After: func(d time.Duration) <-chan time.Time { return time.After(min(d, 5*time.Millisecond)) },
	})
	ctx, cancel := context.WithCancel(context.Background())
	f.c.Start(ctx)
	t.Cleanup(func() { cancel(); f.c.Wait() })
	ins := fakeInspector{}
	f.b = New(Options{Config: cfg, IdP: f.idp, Cache: f.c, Consent: f.cm, Audit: log, Attestor: attest.New(ins), Inspector: ins, Now: f.Now})
	return f
}

// TestWatchTokenEndsWhenTheTokenExpiresUnreplaced: a watched token that expires without a replacement, because the
// clock jumped past its expiry (a suspend) or because every refresh failed while the IdP was unreachable, ends the
// stream with a revocation that says so, rather than leaving the agent holding an expired token with no word.
func TestWatchTokenEndsWhenTheTokenExpiresUnreplaced(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		offline    bool
	}{
		{"suspend", "clock jumped", false},
		{"offline", "unreachable", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newClockFixture(t)
			req := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}
			f.approve(t, req, 8*time.Hour)
			start := f.Now()
			events, done := f.watch(t, req)
			select {
			case ev := <-events:
				if ev.GetToken() == nil {
					t.Fatalf("first event %v, want the token", ev)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no first token")
			}
			if tc.offline {
				f.down.Store(true)
				f.set(start.Add(50 * time.Minute)) // past the refresh time: refreshes fail until the token expires
				time.Sleep(50 * time.Millisecond)
			}
			f.set(start.Add(time.Hour + time.Minute))
			select {
			case ev := <-events:
				r := ev.GetRevoked()
				if r == nil {
					t.Fatalf("event %v, want a revocation", ev)
				}
				if !strings.Contains(r.GetReason(), "expired") || !strings.Contains(r.GetReason(), tc.want) || !strings.Contains(r.GetReason(), "ask again") {
					t.Errorf("reason %q, want it to say the token expired (%s) and to ask again", r.GetReason(), tc.want)
				}
			case err := <-done:
				t.Fatalf("the stream ended (%v) without a revocation", err)
			case <-time.After(5 * time.Second):
				t.Fatal("no event within 5s of the token's expiry: the watcher holds an expired token")
			}
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("stream ended with %v, want a clean end after the revocation", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the stream stayed open after the revocation")
			}
		})
	}
}
