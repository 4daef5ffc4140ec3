package cache

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestNewKey(t *testing.T) {
	base := NewKey("u", "a", "obo", "r", []string{"b", "a"}, "")
	tests := []struct {
		name string
		k    Key
		same bool // same ID as base
	}{
		{"scope order does not matter", NewKey("u", "a", "obo", "r", []string{"a", "b"}, ""), true},
		{"duplicates and empties dropped", NewKey("u", "a", "obo", "r", []string{"a", "", "b", "a"}, ""), true},
		{"hand-built unsorted key", Key{UserOID: "u", AgentAppID: "a", Mode: "obo", Resource: "r", Scopes: []string{"b", "a", "b"}}, true},
		{"other user", NewKey("u2", "a", "obo", "r", []string{"a", "b"}, ""), false},
		{"other agent", NewKey("u", "a2", "obo", "r", []string{"a", "b"}, ""), false},
		{"other local agent of the same identity", func() Key { k := NewKey("u", "a", "obo", "r", []string{"a", "b"}, ""); k.AgentName = "twin"; return k }(), false},
		{"other mode", NewKey("u", "a", "app", "r", []string{"a", "b"}, ""), false},
		{"other resource", NewKey("u", "a", "obo", "r2", []string{"a", "b"}, ""), false},
		{"subset of scopes", NewKey("u", "a", "obo", "r", []string{"a"}, ""), false},
		{"claims challenge", NewKey("u", "a", "obo", "r", []string{"a", "b"}, `{"access_token":{}}`), false},
		{"NUL smuggled into one scope", NewKey("u", "a", "obo", "r", []string{"a\x00b"}, ""), false},
		{"NUL moves a field boundary", NewKey("u\x00a", "", "obo", "r", []string{"a", "b"}, ""), false},
		{"escaped NUL lookalike", NewKey("u", "a", "obo", "r", []string{`a\0b`}, ""), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.k.ID() == base.ID(); got != tt.same {
				t.Errorf("ID equal to base = %v, want %v (%q vs %q)", got, tt.same, tt.k.ID(), base.ID())
			}
		})
	}

	in := []string{"z", "a", "z"}
	k := NewKey("u", "a", "obo", "r", in, "claims")
	if !slices.Equal(in, []string{"z", "a", "z"}) {
		t.Errorf("NewKey modified the caller's scopes: %v", in)
	}
	if !slices.Equal(k.Scopes, []string{"a", "z"}) {
		t.Errorf("Scopes = %v", k.Scopes)
	}
	if len(k.ClaimsHash) != claimsHashLen || strings.Contains(k.ID(), "claims") {
		t.Errorf("ClaimsHash = %q; the challenge must be hashed, not kept", k.ClaimsHash)
	}
	// SHA-256("claims") begins a61808fe40feb8b3433778bbc2ececca: the stored form is its first 32 hex digits.
	if k.ClaimsHash != "a61808fe40feb8b3433778bbc2ececca" {
		t.Errorf("ClaimsHash = %q, want the first 32 hex digits of SHA-256(claims)", k.ClaimsHash)
	}
	for _, key := range []Key{k, base, tests[2].k} {
		if w := key.WithID(); w.ID() != key.ID() {
			t.Errorf("WithID changed the ID: %q vs %q", w.ID(), key.ID())
		}
	}
	if NewKey("u", "a", "obo", "r", nil, "").ClaimsHash != "" {
		t.Error("no claims must give an empty ClaimsHash")
	}
	if NewKey("u", "a", "obo", "r", nil, "x").ClaimsHash != NewKey("u2", "b", "app", "q", nil, "x").ClaimsHash {
		t.Error("the claims hash must depend on the claims only")
	}
	// NUL-smuggled scopes must not collide with each other either.
	if NewKey("u", "a", "m", "r", []string{"a\x00b"}, "").ID() == NewKey("u", "a", "m", "r", []string{"a", "b"}, "").ID() {
		t.Error("a NUL inside a scope collides with two scopes")
	}
}

func TestGetSingleflight(t *testing.T) {
	tests := []struct {
		name      string
		keys      int
		perKey    int
		wantFetch int64
	}{
		{"1000 identical misses", 1, 1000, 1},
		{"10 scope sets", 10, 100, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, false, nil)
			h.idp.gate = make(chan struct{})
			var wg sync.WaitGroup
			toks := make([][]string, tt.keys)
			for i := range toks {
				toks[i] = make([]string, tt.perKey)
			}
			for i := 0; i < tt.keys; i++ {
				for j := 0; j < tt.perKey; j++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						tok, src, err := h.c.Get(context.Background(), testKey(i), time.Minute, false)
						if err != nil || src != SourceIDP {
							t.Errorf("Get: %v %v", src, err)
						}
						toks[i][j] = tok.AccessToken
					}()
				}
			}
			// Hold the fetches until every caller has joined one, so that the test measures sharing, not luck.
			waitFor(t, func() bool {
				h.c.mu.Lock()
				defer h.c.mu.Unlock()
				n := 0
				for _, cl := range h.c.flights {
					n += cl.waiters
				}
				return n == tt.keys*tt.perKey
			})
			close(h.idp.gate)
			wg.Wait()
			if got := h.idp.calls.Load(); got != tt.wantFetch {
				t.Errorf("fetches = %d, want %d", got, tt.wantFetch)
			}
			for i := range toks {
				for _, tok := range toks[i] {
					if tok != toks[i][0] || tok == "" {
						t.Fatalf("key %d: callers got different tokens %q and %q", i, tok, toks[i][0])
					}
				}
			}
			if _, src, _ := h.c.Get(context.Background(), testKey(0), time.Minute, false); src != SourceCache {
				t.Errorf("after the fetch, source = %v, want cache", src)
			}
		})
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func TestGetCancelledCallerDoesNotCancelFetch(t *testing.T) {
	h := newHarness(t, false, nil)
	h.idp.gate = make(chan struct{})
	k := testKey(1)
	ctxA, cancelA := context.WithCancel(context.Background())
	errA := make(chan error, 1)
	go func() {
		_, _, err := h.c.Get(ctxA, k, time.Minute, false)
		errA <- err
	}()
	type res struct {
		tok Token
		err error
	}
	resB := make(chan res, 1)
	waitFor(t, func() bool { return h.idp.inflight.Load() == 1 })
	go func() {
		tok, _, err := h.c.Get(context.Background(), k, time.Minute, false)
		resB <- res{tok, err}
	}()
	waitFor(t, func() bool {
		h.c.mu.Lock()
		defer h.c.mu.Unlock()
		return h.c.flights[k.ID()] != nil && h.c.flights[k.ID()].waiters == 2
	})
	cancelA()
	select {
	case err := <-errA:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled caller got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled caller did not return")
	}
	close(h.idp.gate)
	r := <-resB
	if r.err != nil || r.tok.AccessToken == "" {
		t.Fatalf("other caller: %+v, %v", r.tok, r.err)
	}
	if h.idp.calls.Load() != 1 {
		t.Errorf("fetches = %d", h.idp.calls.Load())
	}
}

// A caller with a deadline hears ErrNoAnswerYet shortly before it, not its own deadline passing; the fetch carries on
// and the token it brings is served from the cache afterwards.
func TestGetAnswersBeforeTheCallersDeadline(t *testing.T) {
	h := newHarness(t, false, nil)
	h.idp.gate = make(chan struct{})
	k := testKey(1)
	const allowed = 500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), allowed)
	defer cancel()
	start := time.Now()
	_, _, err := h.c.Get(ctx, k, time.Minute, false)
	took := time.Since(start)
	if !errors.Is(err, ErrNoAnswerYet) {
		t.Fatalf("Get with a hung fetch = %v, want ErrNoAnswerYet", err)
	}
	if ctx.Err() != nil || took < allowed-answerReserve(allowed)-50*time.Millisecond {
		t.Errorf("answered after %v (context err %v): want shortly before the %v deadline", took, ctx.Err(), allowed)
	}
	close(h.idp.gate)
	waitFor(t, func() bool { _, ok := h.c.Lookup(k, time.Minute); return ok })
	if _, src, err := h.c.Get(context.Background(), k, time.Minute, false); err != nil || src != SourceCache {
		t.Errorf("after the fetch finished: source %q, %v; want the fetched token from the cache", src, err)
	}
	if n := h.idp.calls.Load(); n != 1 {
		t.Errorf("fetches = %d, want 1", n)
	}
}

func TestAnswerReserve(t *testing.T) {
	for _, c := range []struct{ left, want time.Duration }{
		{100 * time.Millisecond, 10 * time.Millisecond},
		{time.Second, 100 * time.Millisecond},
		{time.Minute, 250 * time.Millisecond},
	} {
		if got := answerReserve(c.left); got != c.want {
			t.Errorf("answerReserve(%v) = %v, want %v", c.left, got, c.want)
		}
	}
}

func TestMinTTL(t *testing.T) {
	tests := []struct {
		name    string
		life    time.Duration // of the cached token
		minTTL  time.Duration
		elapsed time.Duration
		hit     bool
	}{
		{"plenty left", time.Hour, time.Minute, 0, true},
		{"exactly min left", time.Hour, 10 * time.Minute, 50 * time.Minute, true},
		{"just under min", time.Hour, 10 * time.Minute, 50*time.Minute + time.Second, false},
		{"zero min, still valid", time.Hour, 0, 59 * time.Minute, true},
		{"zero min, at expiry", time.Hour, 0, time.Hour, false},
		{"min longer than lifetime", time.Minute, 2 * time.Minute, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, false, nil)
			k := testKey(1)
			h.c.Put(k, tokenAt(t0, tt.life, "cached"))
			h.clk.Set(t0.Add(tt.elapsed))
			_, ok := h.c.Lookup(k, tt.minTTL)
			if ok != tt.hit {
				t.Errorf("Lookup hit = %v, want %v", ok, tt.hit)
			}
			tok, src, err := h.c.Get(context.Background(), k, tt.minTTL, false)
			if err != nil && !errors.Is(err, ErrTooShort) {
				t.Fatal(err)
			}
			if tt.hit && (src != SourceCache || tok.AccessToken != "cached") {
				t.Errorf("Get = %q from %v, want the cached token", tok.AccessToken, src)
			}
			if !tt.hit && tok.AccessToken == "cached" {
				t.Error("Get served a token with less than min TTL left")
			}
		})
	}
}

func TestFetchedTokenTooShort(t *testing.T) {
	h := newHarness(t, false, nil)
	h.idp.life = 2 * time.Minute
	k := testKey(1)
	if _, _, err := h.c.Get(context.Background(), k, 5*time.Minute, false); !errors.Is(err, ErrTooShort) {
		t.Fatalf("err = %v, want ErrTooShort", err)
	}
	if n := h.c.Stats().Entries; n != 0 {
		t.Errorf("a too-short token was cached (%d entries)", n)
	}
	if _, _, err := h.c.Get(context.Background(), k, time.Minute, false); err != nil {
		t.Fatalf("a caller needing less must be served: %v", err)
	}
}

func TestSuspendJumpNotServed(t *testing.T) {
	for _, scheduler := range []bool{false, true} {
		h := newHarness(t, scheduler, nil)
		k := testKey(1)
		h.c.Put(k, tokenAt(t0, time.Hour, "before-sleep"))
		if _, ok := h.c.Lookup(k, time.Minute); !ok {
			t.Fatal("fresh token not served")
		}
		// The laptop sleeps for two hours: no timer fired, but the wall clock moved.
		h.clk.Set(t0.Add(2 * time.Hour))
		if tok, ok := h.c.Lookup(k, 0); ok {
			t.Fatalf("scheduler=%v: served %q after its expiry passed during suspend", scheduler, tok.AccessToken)
		}
		tok, src, err := h.c.Get(context.Background(), k, time.Minute, false)
		if err != nil || src != SourceIDP || tok.AccessToken == "before-sleep" {
			t.Fatalf("scheduler=%v: Get after resume = %q %v %v", scheduler, tok.AccessToken, src, err)
		}
	}
}

func TestRefreshAheadOnlyRecentlyUsed(t *testing.T) {
	h := newHarness(t, true, func(o *Options) { o.Jitter = -1; o.RefreshWindow = 15 * time.Minute })
	used, idle := testKey(1), testKey(2)
	h.c.Put(used, tokenAt(t0, time.Hour, "used-0"))
	h.c.Put(idle, tokenAt(t0, time.Hour, "idle-0"))
	h.waitIdle()
	w := h.c.Watch(testKey(3)) // a watcher of an unrelated key must not make these count as watched
	defer w.Finish()

	h.set(t0.Add(35 * time.Minute))
	if _, ok := h.c.Lookup(used, time.Minute); !ok {
		t.Fatal("not served")
	}
	h.set(t0.Add(45*time.Minute - time.Second))
	if n := h.idp.calls.Load(); n != 0 {
		t.Fatalf("refreshed %d times before RefreshAt", n)
	}
	h.set(t0.Add(45 * time.Minute))
	if n := h.idp.calls.Load(); n != 1 {
		t.Fatalf("fetches at RefreshAt = %d, want 1 (only the used token)", n)
	}
	if got, _ := h.c.Lookup(used, 0); got.AccessToken == "used-0" {
		t.Error("the used token was not replaced")
	}
	if h.idp.fetchStarts()[0] != t0.Add(45*time.Minute) {
		t.Errorf("refresh started at %v, want RefreshAt", h.idp.fetchStarts()[0])
	}
	if got, ok := h.c.Lookup(idle, 0); !ok || got.AccessToken != "idle-0" {
		t.Error("the idle token must be kept, unrefreshed, until it expires")
	}
	h.set(t0.Add(time.Hour))
	if _, ok := h.c.Lookup(idle, 0); ok {
		t.Error("expired idle token served")
	}
	if n := h.c.Stats().Entries; n != 1 {
		t.Errorf("entries = %d, want 1: the expired idle token must be dropped", n)
	}
	if n := h.idp.calls.Load(); n != 1 {
		t.Errorf("fetches = %d, the idle token must never be refreshed", n)
	}
}

func TestRefreshSpreadAndConcurrencyCap(t *testing.T) {
	const n, maxConc = 5000, 4
	h := newHarness(t, true, func(o *Options) {
		o.RefreshWindow = 24 * time.Hour
		o.MaxConcurrentRefresh = maxConc
		o.MaxPerAgent = -1 // all n keys belong to one agent
	})
	h.idp.life = time.Hour
	h.idp.delay = 200 * time.Microsecond
	for i := range n {
		k := testKey(i)
		h.c.Put(k, tokenAt(t0, time.Hour, "t"))
		h.c.Lookup(k, 0) // mark used
	}
	h.waitIdle()
	// RefreshAt = t0+45m, time to refresh 45m, ±10% → window [40m30s, 49m30s].
	lo, hi := t0.Add(40*time.Minute+30*time.Second), t0.Add(49*time.Minute+30*time.Second)
	h.set(lo.Add(-time.Second))
	if c := h.idp.calls.Load(); c != 0 {
		t.Fatalf("%d refreshes before the jitter window", c)
	}
	for at := lo.Add(-time.Second); !at.After(hi.Add(time.Minute)); at = at.Add(5 * time.Second) {
		h.set(at)
	}
	if c := h.idp.calls.Load(); c != n {
		t.Fatalf("refreshes = %d, want %d", c, n)
	}
	starts := h.idp.fetchStarts()
	first := slices.MinFunc(starts, time.Time.Compare)
	last := slices.MaxFunc(starts, time.Time.Compare)
	if first.Before(lo.Add(-5*time.Second)) || last.After(hi.Add(5*time.Second)) {
		t.Errorf("refreshes ran from %v to %v, outside the jitter window", first.Sub(t0), last.Sub(t0))
	}
	if spread, window := last.Sub(first), hi.Sub(lo); spread < window*8/10 {
		t.Errorf("refreshes spread over %v, want >= 80%% of %v", spread, window)
	}
	// No single 5 s step may carry much more than its share (5000 over 108 steps ≈ 46).
	perStep := map[time.Time]int{}
	for _, s := range starts {
		perStep[s]++
	}
	for at, c := range perStep {
		if c > 150 {
			t.Errorf("%d refreshes started at %v: not spread", c, at.Sub(t0))
		}
	}
	if m := h.idp.maxIn.Load(); m > maxConc || m < 2 {
		t.Errorf("max concurrent refreshes = %d, want 2..%d (the cap, and some overlap to show it was tested)", m, maxConc)
	}
}

func TestTransientRefreshBackoff(t *testing.T) {
	h := newHarness(t, true, func(o *Options) {
		o.Jitter = -1
		o.Backoff = Backoff{Min: time.Second, Max: 5 * time.Minute}
	})
	k := testKey(1)
	h.c.Put(k, tokenAt(t0, 10*time.Hour, "long"))
	h.c.Lookup(k, 0)
	h.idp.setErr(errTransient)
	w := h.c.Watch(k)
	defer w.Finish()
	recv(t, w)

	h.set(t0.Add(7*time.Hour + 30*time.Minute)) // RefreshAt
	var delays []time.Duration
	for attempt := 1; attempt <= 14; attempt++ {
		if got := h.idp.calls.Load(); got != int64(attempt) {
			t.Fatalf("attempt %d: fetches = %d", attempt, got)
		}
		if tok, ok := h.c.Lookup(k, time.Minute); !ok || tok.AccessToken != "long" {
			t.Fatal("the valid token must keep being served while offline")
		}
		online, retry := h.c.Online()
		due := h.dueOf(k)
		if online || !retry.After(h.clk.Now()) {
			t.Fatalf("Online() = %v, %v; want offline, retry in the future", online, retry)
		}
		if s := h.c.Stats(); s.Online || s.LastErrorClass != "transient" {
			t.Fatalf("Stats = %+v", s)
		}
		d := due.Sub(h.clk.Now())
		delays = append(delays, d)
		ceil := min(time.Second<<(attempt-1), 5*time.Minute)
		if d < ceil/2 || d > ceil {
			t.Errorf("retry %d after %v, want in [%v, %v]", attempt, d, ceil/2, ceil)
		}
		h.set(due)
	}
	if delays[len(delays)-1] < delays[0]*100 {
		t.Errorf("backoff did not grow: %v", delays)
	}
	noEvent(t, w) // transient failures are not news for watchers
	h.idp.setErr(nil)
	h.set(h.dueOf(k))
	if online, _ := h.c.Online(); !online {
		t.Error("still offline after a successful refresh")
	}
	if ev := recv(t, w); ev.Token == nil || ev.Token.AccessToken == "long" {
		t.Errorf("watcher did not get the refreshed token: %+v", ev)
	}
}

func TestPermanentRefreshPurges(t *testing.T) {
	type call struct {
		k   Key
		err error
	}
	calls := make(chan call, 1)
	h := newHarness(t, true, func(o *Options) {
		o.Jitter = -1
		o.OnPermanent = func(k Key, err error) { calls <- call{k, err} }
	})
	k := testKey(1)
	h.c.Put(k, tokenAt(t0, time.Hour, "doomed"))
	h.c.Lookup(k, 0)
	w := h.c.Watch(k)
	defer w.Finish()
	if ev := recv(t, w); ev.Token == nil || ev.Token.AccessToken != "doomed" {
		t.Fatalf("first event = %+v, want the current token", ev)
	}
	h.idp.setErr(errPermanent)
	h.set(t0.Add(45 * time.Minute))
	if _, ok := h.c.Lookup(k, 0); ok {
		t.Error("token still served after a permanent refresh failure")
	}
	if ev := recv(t, w); !ev.Revoked || ev.Token != nil || ev.Reason == "" {
		t.Errorf("watcher event = %+v, want revoked with a reason", ev)
	}
	select {
	case got := <-calls:
		if got.k.ID() != k.ID() || !errors.Is(got.err, errPermanent) {
			t.Errorf("OnPermanent(%v, %v)", got.k, got.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnPermanent not called")
	}
	if online, _ := h.c.Online(); !online {
		t.Error("a permanent failure is not an outage")
	}
}

func TestInteractionRefreshKeepsServing(t *testing.T) {
	h := newHarness(t, true, func(o *Options) { o.Jitter = -1 })
	k := testKey(1)
	h.c.Put(k, tokenAt(t0, time.Hour, "valid"))
	h.c.Lookup(k, 0)
	w := h.c.Watch(k)
	defer w.Finish()
	recv(t, w)
	h.idp.setErr(errInteraction)
	h.set(t0.Add(45 * time.Minute))
	if tok, ok := h.c.Lookup(k, time.Minute); !ok || tok.AccessToken != "valid" {
		t.Fatal("the still-valid token must be served after an interaction-required refresh")
	}
	if ev := recv(t, w); !ev.InteractionRequired || ev.Revoked || ev.Token == nil || ev.Token.AccessToken != "valid" {
		t.Errorf("watcher event = %+v", ev)
	}
	h.set(t0.Add(59 * time.Minute))
	if n := h.idp.calls.Load(); n != 1 {
		t.Errorf("fetches = %d: retrying cannot help until the user acts", n)
	}
	h.set(t0.Add(time.Hour))
	if _, ok := h.c.Lookup(k, 0); ok || h.c.Stats().Entries != 0 {
		t.Error("entry not dropped at expiry")
	}
	if ev := recv(t, w); ev.Token != nil || ev.Revoked {
		t.Errorf("expiry event = %+v, want no token, not revoked", ev)
	}
}

func TestMissFetchErrors(t *testing.T) {
	tests := []struct {
		name        string
		err         error
		wantOffline bool
	}{
		{"transient", errTransient, true},
		{"permanent", errPermanent, false},
		{"interaction", errInteraction, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, false, nil)
			h.idp.setErr(tt.err)
			_, _, err := h.c.Get(context.Background(), testKey(1), time.Minute, false)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want the fetcher's error as-is", err)
			}
			online, retry := h.c.Online()
			if online == tt.wantOffline {
				t.Errorf("online = %v", online)
			}
			if tt.wantOffline && !retry.After(h.clk.Now()) {
				t.Errorf("retry at %v, want in the future", retry)
			}
			h.idp.setErr(nil)
			if tt.wantOffline {
				h.clk.Set(retry) // offline, misses wait for the retry time (TestOfflineMissGate)
			}
			if _, _, err := h.c.Get(context.Background(), testKey(1), time.Minute, false); err != nil {
				t.Fatal(err)
			}
			if online, _ := h.c.Online(); !online {
				t.Error("still offline after a success")
			}
		})
	}
}

func TestForceBypassesCache(t *testing.T) {
	h := newHarness(t, false, nil)
	k := testKey(1)
	a, _, _ := h.c.Get(context.Background(), k, 0, false)
	b, src, err := h.c.Get(context.Background(), k, 0, true)
	if err != nil || src != SourceIDP || b.AccessToken == a.AccessToken {
		t.Fatalf("force: %q %v %v", b.AccessToken, src, err)
	}
	if got, _ := h.c.Lookup(k, 0); got.AccessToken != b.AccessToken {
		t.Error("the forced token must replace the cached one")
	}
}

func TestFetcherMisbehaves(t *testing.T) {
	tests := []struct {
		name  string
		fetch Fetcher
	}{
		{"panics", func(context.Context, Key) (Token, error) { panic("boom") }},
		{"no access token", func(context.Context, Key) (Token, error) { return Token{ExpiresAt: t0.Add(time.Hour)}, nil }},
		{"no expiry", func(context.Context, Key) (Token, error) { return Token{AccessToken: "x"}, nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, false, func(o *Options) { o.Fetch = tt.fetch })
			if _, _, err := h.c.Get(context.Background(), testKey(1), 0, false); err == nil {
				t.Fatal("want an error")
			}
			if h.c.Stats().Entries != 0 {
				t.Error("a bad token was cached")
			}
		})
	}
	if _, _, err := New(Options{}).Get(context.Background(), testKey(1), 0, false); !errors.Is(err, ErrNoFetcher) {
		t.Errorf("no fetcher: %v", err)
	}
}

func TestPutSnapshot(t *testing.T) {
	h := newHarness(t, false, nil)
	h.clk.Set(t0.Add(time.Minute))
	h.c.Put(testKey(1), tokenAt(t0, time.Hour, "a"))
	h.c.Put(testKey(2), tokenAt(t0.Add(-2*time.Hour), time.Hour, "expired"))
	h.c.Put(testKey(3), Token{ExpiresAt: t0.Add(time.Hour)})
	snap := h.c.Snapshot()
	if len(snap) != 1 || snap[0].Key.ID() != testKey(1).ID() || snap[0].Token.AccessToken != "a" {
		t.Fatalf("Snapshot = %+v", snap)
	}
	if want := t0.Add(45 * time.Minute); !snap[0].Token.RefreshAt.Equal(want) {
		t.Errorf("default RefreshAt = %v, want 75%% of the lifetime", snap[0].Token.RefreshAt)
	}
	h2 := newHarness(t, false, nil)
	h2.clk.Set(t0.Add(time.Minute))
	for _, e := range snap {
		h2.c.Put(e.Key, e.Token)
	}
	if tok, src, err := h2.c.Get(context.Background(), testKey(1), time.Minute, false); err != nil || src != SourceCache || tok.AccessToken != "a" {
		t.Errorf("restored: %q %v %v", tok.AccessToken, src, err)
	}
}

func TestBackoffDelay(t *testing.T) {
	b := Backoff{Min: time.Second, Max: 5 * time.Minute}
	tests := []struct {
		n      int
		lo, hi time.Duration
	}{
		{0, 500 * time.Millisecond, time.Second},
		{1, time.Second, 2 * time.Second},
		{4, 8 * time.Second, 16 * time.Second},
		{8, 128 * time.Second, 256 * time.Second},
		{9, 150 * time.Second, 5 * time.Minute},
		{60, 150 * time.Second, 5 * time.Minute},
		{1000, 150 * time.Second, 5 * time.Minute},
	}
	huge := Backoff{Min: time.Second, Max: time.Duration(math.MaxInt64)}
	if d := huge.Delay(200); d <= 0 {
		t.Errorf("Delay with a huge Max overflowed: %v", d)
	}
	if d := (Backoff{}).Delay(3); d != 0 {
		t.Errorf("zero Backoff: %v", d)
	}
	for _, tt := range tests {
		for range 200 {
			if d := b.Delay(tt.n); d < tt.lo || d > tt.hi {
				t.Fatalf("Delay(%d) = %v, want in [%v, %v]", tt.n, d, tt.lo, tt.hi)
			}
		}
	}
}

// The production timer path (no fake After): a used token is refreshed on the real clock.
func TestRefreshWithRealTimer(t *testing.T) {
	var calls atomic.Int64
	c := New(Options{
		Jitter:  -1,
		Backoff: Backoff{Min: 10 * time.Millisecond, Max: time.Second},
		Log:     slog.New(slog.DiscardHandler),
		Fetch: func(context.Context, Key) (Token, error) {
			calls.Add(1)
			return Token{AccessToken: "new", ExpiresAt: time.Now().Add(time.Hour)}, nil
		},
	})
	k := testKey(1)
	now := time.Now()
	c.Put(k, Token{AccessToken: "old", IssuedAt: now, ExpiresAt: now.Add(400 * time.Millisecond)})
	c.Lookup(k, 0)
	ctx, cancel := context.WithCancel(context.Background())
	c.Start(ctx)
	c.Start(ctx) // a second Start is a no-op
	waitFor(t, func() bool { tok, _ := c.Lookup(k, 0); return tok.AccessToken == "new" })
	if since := time.Since(now); since < 250*time.Millisecond {
		t.Errorf("refreshed after %v, before RefreshAt (300ms)", since)
	}
	cancel()
	c.Wait()
	if n := calls.Load(); n != 1 {
		t.Errorf("fetches = %d", n)
	}
}

func TestFingerprint(t *testing.T) {
	if Fingerprint("") != "" {
		t.Error("an empty token has a fingerprint")
	}
	if got := Fingerprint("abc"); got != "ba7816bf8f01cfea" { // SHA-256("abc") begins ba7816bf8f01cfea
		t.Errorf("Fingerprint(abc) = %s", got)
	}
	c := New(Options{})
	k := NewKey("user", "agent", "obo", "api://r", []string{"s"}, "")
	c.Put(k, Token{AccessToken: "abc", ExpiresAt: time.Now().Add(time.Hour)})
	if tok, ok := c.Peek(k); !ok || tok.Fingerprint != "ba7816bf8f01cfea" {
		t.Errorf("a stored token's fingerprint = %q, %v; want it filled in when stored", tok.Fingerprint, ok)
	}
}

// TestLookupWithPreparedID: a key prepared with WithID finds the same entry as one built field by field.
func TestLookupWithPreparedID(t *testing.T) {
	c := New(Options{})
	k := NewKey("user", "agent", "obo", "api://r", []string{"b", "a"}, "")
	c.Put(k, Token{AccessToken: "t", ExpiresAt: time.Now().Add(time.Hour)})
	if tok, ok := c.Lookup(k.WithID(), 0); !ok || tok.AccessToken != "t" {
		t.Fatalf("Lookup with a prepared ID: %q, %v", tok.AccessToken, ok)
	}
	other := NewKey("user", "agent", "obo", "api://r", []string{"a"}, "").WithID()
	if _, ok := c.Lookup(other, 0); ok {
		t.Fatal("a prepared ID of another key found the entry")
	}
}
