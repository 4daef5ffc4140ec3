package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

// fakeClock is a settable wall clock with an After that fires when the clock is moved past its deadline.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: t0} }

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) After(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- f.now
		return ch
	}
	f.waiters = append(f.waiters, fakeWaiter{at: f.now.Add(d), ch: ch})
	return ch
}

func (f *fakeClock) Set(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = t
	kept := f.waiters[:0]
	for _, w := range f.waiters {
		if !w.at.After(t) {
			w.ch <- t
		} else {
			kept = append(kept, w)
		}
	}
	f.waiters = kept
}

// fetchStarts returns the fake times at which fetches began.
func (p *fakeIdP) fetchStarts() []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.starts)
}

// fakeIdP hands out numbered tokens living `life` from the fake clock's now, or the error err returns.
type fakeIdP struct {
	clk      *fakeClock
	life     time.Duration
	calls    atomic.Int64
	seq      atomic.Int64
	inflight atomic.Int64
	maxIn    atomic.Int64
	gate     chan struct{} // when non-nil, every fetch waits for it to close
	mu       sync.Mutex
	err      error
	starts   []time.Time
	grant    string
	delay    time.Duration // real time each fetch takes, so concurrent refreshes overlap
}

func (p *fakeIdP) setErr(err error) {
	p.mu.Lock()
	p.err = err
	p.mu.Unlock()
}

func (p *fakeIdP) fetch(ctx context.Context, k Key) (Token, error) {
	p.calls.Add(1)
	n := p.inflight.Add(1)
	defer p.inflight.Add(-1)
	for {
		m := p.maxIn.Load()
		if n <= m || p.maxIn.CompareAndSwap(m, n) {
			break
		}
	}
	now := p.clk.Now()
	p.mu.Lock()
	p.starts = append(p.starts, now)
	err := p.err
	p.mu.Unlock()
	if p.delay > 0 {
		time.Sleep(p.delay)
	}
	if p.gate != nil {
		select {
		case <-p.gate:
		case <-ctx.Done():
			return Token{}, ctx.Err()
		}
	}
	if err != nil {
		return Token{}, err
	}
	return Token{
		AccessToken: fmt.Sprintf("tok-%d", p.seq.Add(1)),
		IssuedAt:    now,
		ExpiresAt:   now.Add(p.life),
		GrantID:     p.grant,
	}, nil
}

var (
	errTransient   = errors.New("fake: network down")
	errPermanent   = errors.New("fake: invalid_grant")
	errInteraction = errors.New("fake: mfa required")
	errLocal       = errors.New("fake: decided here")
)

func fakeClassify(err error) Class {
	switch {
	case errors.Is(err, errTransient):
		return Transient
	case errors.Is(err, errPermanent):
		return Permanent
	case errors.Is(err, errInteraction):
		return Interaction
	}
	return Other
}

type harness struct {
	t   *testing.T
	clk *fakeClock
	idp *fakeIdP
	c   *Cache
}

// newHarness builds a cache on a fake clock and fake IdP; tweak adjusts the options. The scheduler runs until the test
// ends.
func newHarness(t *testing.T, start bool, tweak func(*Options)) *harness {
	t.Helper()
	clk := newFakeClock()
	idp := &fakeIdP{clk: clk, life: time.Hour}
	o := Options{Now: clk.Now, After: clk.After, Fetch: idp.fetch, Classify: fakeClassify, Log: slog.New(slog.DiscardHandler)}
	if tweak != nil {
		tweak(&o)
	}
	h := &harness{t: t, clk: clk, idp: idp, c: New(o)}
	if start {
		ctx, cancel := context.WithCancel(context.Background())
		h.c.Start(ctx)
		t.Cleanup(func() { cancel(); h.c.Wait() })
	}
	return h
}

// set moves the fake clock and waits until the scheduler has done everything that fell due.
func (h *harness) set(at time.Time) {
	h.t.Helper()
	h.clk.Set(at)
	h.c.signal()
	h.waitIdle()
}

// waitIdle waits until no refresh or fetch is running and nothing in the heap is due at the fake now.
func (h *harness) waitIdle() {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		now := h.clk.Now()
		h.c.mu.Lock()
		idle := len(h.c.sem) == 0 && len(h.c.flights) == 0 && (len(h.c.heap) == 0 || h.c.heap[0].due.After(now))
		h.c.mu.Unlock()
		if idle {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("scheduler did not go idle at %v", now)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// dueOf returns the scheduled action time of k's entry.
func (h *harness) dueOf(k Key) time.Time {
	h.t.Helper()
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	e := h.c.entries[k.ID()]
	if e == nil {
		h.t.Fatalf("no entry for %v", k)
	}
	return e.due
}

func testKey(i int) Key {
	return NewKey("user-1", "agent-1", "obo", "https://graph.example/", []string{fmt.Sprintf("scope.%d", i)}, "")
}

func tokenAt(issued time.Time, life time.Duration, name string) Token {
	return Token{AccessToken: name, IssuedAt: issued, ExpiresAt: issued.Add(life)}
}

// recv waits briefly for one event.
func recv(t *testing.T, s *Subscriber) Event {
	t.Helper()
	select {
	case ev, ok := <-s.Updates():
		if !ok {
			t.Fatal("updates closed")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	return Event{}
}

func noEvent(t *testing.T, s *Subscriber) {
	t.Helper()
	select {
	case ev := <-s.Updates():
		t.Fatalf("unexpected event %+v", ev)
	default:
	}
}

// Watch subscribes to k without a grant, as the cache's own tests observe it: a usable cached token is delivered at
// once, and the subscription sees every event until Finish. The daemon watches through WatchGrant.
func (c *Cache) Watch(k Key) *Subscriber {
	s := &Subscriber{c: c, id: k.ID(), ch: make(chan Event, 1)}
	now := c.wallNow()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subscribeLocked(k, s)
	if e := c.entries[s.id]; e != nil && usable(&e.tok, now, 0) {
		tok := e.tok
		s.send(Event{Token: &tok, InteractionRequired: e.interaction})
	}
	return s
}
