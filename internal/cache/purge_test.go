package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestPurgeIndexes(t *testing.T) {
	type tok struct {
		user, agent, grant string
	}
	all := []tok{
		{"u1", "a1", "g1"}, {"u1", "a2", "g2"}, {"u2", "a1", "g3"}, {"u2", "a2", "g3"}, {"u3", "a3", ""},
	}
	key := func(x tok) Key { return NewKey(x.user, x.agent, "obo", "r", []string{"s"}, "") }
	tests := []struct {
		name  string
		purge func(c *Cache) int
		gone  []int // indexes into all
	}{
		{"user", func(c *Cache) int { return c.PurgeUser("u1", "logout") }, []int{0, 1}},
		{"agent", func(c *Cache) int { return c.PurgeAgent("a1", "removed") }, []int{0, 2}},
		{"grant", func(c *Cache) int { return c.PurgeGrant("g3", "revoked") }, []int{2, 3}},
		{"empty grant id purges nothing", func(c *Cache) int { return c.PurgeGrant("", "revoked") }, nil},
		{"unknown user", func(c *Cache) int { return c.PurgeUser("nobody", "x") }, nil},
		{"all", func(c *Cache) int { return c.PurgeAll("policy") }, []int{0, 1, 2, 3, 4}},
		{"matching", func(c *Cache) int {
			return len(c.PurgeMatching(func(k Key) bool { return k.UserOID == "u2" && k.AgentAppID == "a2" }, "policy"))
		}, []int{3}},
		{"one key", func(c *Cache) int {
			if c.Purge(key(all[4]), "x") {
				return 1
			}
			return 0
		}, []int{4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, false, nil)
			subs := make([]*Subscriber, len(all))
			for i, x := range all {
				tk := tokenAt(t0, time.Hour, fmt.Sprint(i))
				tk.GrantID = x.grant
				h.c.Put(key(x), tk)
				subs[i] = h.c.Watch(key(x))
				defer subs[i].Finish()
				recv(t, subs[i])
			}
			if n := tt.purge(h.c); n != len(tt.gone) {
				t.Errorf("purged %d, want %d", n, len(tt.gone))
			}
			for i, x := range all {
				gone := false
				for _, g := range tt.gone {
					gone = gone || g == i
				}
				_, ok := h.c.Lookup(key(x), 0)
				if ok == gone {
					t.Errorf("%v: cached = %v, want %v", x, ok, !gone)
				}
				// Watchers of purged keys already hold the revocation when Purge returns.
				if gone {
					select {
					case ev := <-subs[i].Updates():
						if !ev.Revoked {
							t.Errorf("%v: event %+v, want revoked", x, ev)
						}
					default:
						t.Errorf("%v: no revocation event when the purge returned", x)
					}
				} else {
					noEvent(t, subs[i])
				}
			}
			if s := h.c.Stats(); s.Entries != len(all)-len(tt.gone) {
				t.Errorf("Entries = %d", s.Entries)
			}
			// The indexes must not keep purged entries alive.
			h.c.mu.Lock()
			defer h.c.mu.Unlock()
			for _, ix := range []map[string]map[string]*entry{h.c.byUser, h.c.byAgent, h.c.byGrant} {
				for _, m := range ix {
					for id := range m {
						if h.c.entries[id] == nil {
							t.Errorf("index holds purged entry %q", id)
						}
					}
				}
			}
			if len(h.c.heap) != len(h.c.entries) {
				t.Errorf("heap has %d items for %d entries", len(h.c.heap), len(h.c.entries))
			}
		})
	}
}

// A fetch that was in flight when a purge began must not be stored or handed out, even though it finishes after.
// purgesOfKey are the purges that cover k, one of each kind (a token fetched for k carries grant "g1").
var purgesOfKey = []struct {
	name  string
	purge func(c *Cache, k Key)
}{
	{"user", func(c *Cache, k Key) { c.PurgeUser(k.UserOID, "r") }},
	{"agent", func(c *Cache, k Key) { c.PurgeAgent(k.AgentAppID, "r") }},
	{"grant", func(c *Cache, k Key) { c.PurgeGrant("g1", "r") }},
	{"all", func(c *Cache, k Key) { c.PurgeAll("r") }},
	{"key", func(c *Cache, k Key) { c.Purge(k, "r") }},
	{"matching", func(c *Cache, k Key) { c.PurgeMatching(func(x Key) bool { return x.Resource == k.Resource }, "r") }},
}

func TestInflightFetchDiscardedOnPurge(t *testing.T) {
	for _, tt := range purgesOfKey {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, false, nil)
			h.idp.gate = make(chan struct{})
			h.idp.grant = "g1"
			k := testKey(1)
			errc := make(chan error, 1)
			go func() {
				_, _, err := h.c.Get(context.Background(), k, time.Minute, false)
				errc <- err
			}()
			waitFor(t, func() bool { return h.idp.inflight.Load() == 1 })
			tt.purge(h.c, k)
			close(h.idp.gate)
			if err := <-errc; !errors.Is(err, ErrPurged) {
				t.Fatalf("Get = %v, want ErrPurged", err)
			}
			if _, ok := h.c.Lookup(k, 0); ok {
				t.Fatal("a token fetched across a purge was cached")
			}
			// A fresh Get after the purge fetches anew.
			if _, src, err := h.c.Get(context.Background(), k, time.Minute, false); err != nil || src != SourceIDP {
				t.Fatalf("Get after purge: %v %v", src, err)
			}
		})
	}
	t.Run("more purges than the log holds discard conservatively", func(t *testing.T) {
		h := newHarness(t, false, nil)
		h.idp.gate = make(chan struct{})
		k := testKey(1)
		errc := make(chan error, 1)
		go func() {
			_, _, err := h.c.Get(context.Background(), k, time.Minute, false)
			errc <- err
		}()
		waitFor(t, func() bool { return h.idp.inflight.Load() == 1 })
		for i := range purgeLogSize + 1 {
			h.c.PurgeUser(fmt.Sprint("other-", i), "r")
		}
		close(h.idp.gate)
		if err := <-errc; !errors.Is(err, ErrPurged) {
			t.Fatalf("Get = %v, want ErrPurged", err)
		}
	})
	t.Run("unrelated purge does not discard", func(t *testing.T) {
		h := newHarness(t, false, nil)
		h.idp.gate = make(chan struct{})
		k := testKey(1)
		errc := make(chan error, 1)
		go func() {
			_, _, err := h.c.Get(context.Background(), k, time.Minute, false)
			errc <- err
		}()
		waitFor(t, func() bool { return h.idp.inflight.Load() == 1 })
		h.c.PurgeUser("someone-else", "r")
		h.c.PurgeGrant("other-grant", "r")
		close(h.idp.gate)
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	})
}

// The scheduler pops a due entry under the lock but refreshes it on a goroutine of its own, which takes the lock only
// later. A purge in that gap (the reviewer hit it from the scheduler's After hook) must stop the refresh: a fetch it
// started after the purge would postdate every purge record, so its token would be stored and persisted. Driving
// stepLocked and the purge under one hold of the lock makes the purge win that race every time.
func TestPurgeBeforeScheduledRefreshStarts(t *testing.T) {
	purges := []struct {
		name  string
		purge func(c *Cache, k Key) // runs with c.mu held, as the body of the matching public purge does
	}{
		{"key", func(c *Cache, k Key) { c.purgeKeyLocked(k.ID(), "r") }},
		{"user", func(c *Cache, k Key) {
			r := c.beginPurgeLocked(purgeUser, k.UserOID)
			c.purgeSetLocked(maps.Clone(c.byUser[k.UserOID]), r, "r")
		}},
	}
	for _, tt := range purges {
		t.Run(tt.name, func(t *testing.T) {
			var stored atomic.Int64
			h := newHarness(t, false, func(o *Options) {
				o.Jitter = -1
				o.OnStored = func(Key, Token) { stored.Add(1) }
			})
			k := testKey(1)
			if _, _, err := h.c.Get(context.Background(), k, time.Minute, false); err != nil {
				t.Fatal(err)
			}
			h.clk.Set(h.dueOf(k))
			h.c.Lookup(k, 0) // used lately, so the scheduler refreshes it
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			h.c.mu.Lock()
			h.c.stepLocked(ctx, h.c.wallNow())
			launched := len(h.c.sem)
			tt.purge(h.c, k)
			h.c.mu.Unlock()
			h.c.Wait()
			h.waitIdle()
			if launched != 1 {
				t.Fatalf("%d refreshes launched, want 1: the test exercised nothing", launched)
			}
			if tok, ok := h.c.Peek(k); ok {
				t.Errorf("cached after the purge: %q", tok.AccessToken)
			}
			if n := h.idp.calls.Load(); n != 1 {
				t.Errorf("fetcher ran %d times, want once (the Get before the purge)", n)
			}
			if n := stored.Load(); n != 1 {
				t.Errorf("OnStored ran %d times, want once: a token fetched after the purge was persisted", n)
			}
		})
	}
}

// Many iterations of Gets racing purges: a Get that starts after PurgeX returned never returns a token fetched before
// that purge began. Each token carries the number of purges begun when its fetch started.
func TestPurgeRacesGet(t *testing.T) {
	var begun, done atomic.Int64
	k := NewKey("u1", "a1", "obo", "r", []string{"s"}, "")
	clk := newFakeClock()
	var seq atomic.Int64
	fetch := func(ctx context.Context, _ Key) (Token, error) {
		stamp := begun.Load()
		if seq.Add(1)%3 == 0 {
			time.Sleep(time.Duration(seq.Load()%50) * time.Microsecond)
		}
		return Token{AccessToken: fmt.Sprintf("t-%d-%d", seq.Load(), stamp), ExpiresAt: clk.Now().Add(time.Hour), GrantID: "g1"}, nil
	}
	c := New(Options{Now: clk.Now, Fetch: fetch, Log: slog.New(slog.DiscardHandler)})
	purgers := []func(){
		func() { c.PurgeUser("u1", "x") },
		func() { c.PurgeAgent("a1", "x") },
		func() { c.PurgeGrant("g1", "x") },
		func() { c.PurgeAll("x") },
		func() { c.Purge(k, "x") },
	}
	const rounds = 3000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var violations, served atomic.Int64
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				floor := done.Load() // purges completed before this Get starts
				tok, _, err := c.Get(context.Background(), k, time.Minute, false)
				if err != nil {
					if !errors.Is(err, ErrPurged) {
						t.Errorf("Get: %v", err)
					}
					continue
				}
				served.Add(1)
				var seqNo, stamp int64
				if _, err := fmt.Sscanf(tok.AccessToken, "t-%d-%d", &seqNo, &stamp); err != nil {
					t.Errorf("token %q: %v", tok.AccessToken, err)
				}
				if stamp < floor {
					violations.Add(1)
				}
			}
		}()
	}
	for i := range rounds {
		begun.Add(1)
		purgers[i%len(purgers)]()
		done.Add(1)
		if i%10 == 0 {
			time.Sleep(20 * time.Microsecond)
		}
	}
	close(stop)
	wg.Wait()
	if v := violations.Load(); v > 0 {
		t.Errorf("%d Gets returned a token fetched before a purge that had already returned", v)
	}
	if served.Load() == 0 {
		t.Error("no Get succeeded; the test exercised nothing")
	}
}
