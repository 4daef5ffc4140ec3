package cache

import (
	"context"
	"sync"
	"testing"
	"time"
)

func TestWatchCurrentRefreshedRevoked(t *testing.T) {
	h := newHarness(t, true, func(o *Options) { o.Jitter = -1 })
	k := testKey(1)
	h.c.Put(k, tokenAt(t0, time.Hour, "first"))
	w := h.c.Watch(k)
	defer w.Finish()
	if ev := recv(t, w); ev.Token == nil || ev.Token.AccessToken != "first" || ev.Revoked {
		t.Fatalf("current: %+v", ev)
	}
	// Being watched counts as use: the token is refreshed ahead although nobody looked it up.
	h.set(t0.Add(45 * time.Minute))
	ev := recv(t, w)
	if ev.Token == nil || ev.Token.AccessToken == "first" {
		t.Fatalf("refreshed: %+v", ev)
	}
	if got, _ := h.c.Lookup(k, 0); got.AccessToken != ev.Token.AccessToken {
		t.Errorf("watcher got %q, cache serves %q", ev.Token.AccessToken, got.AccessToken)
	}
	h.c.PurgeGrant("none", "unrelated")
	noEvent(t, w)
	h.c.Purge(k, "grant revoked")
	if ev := recv(t, w); !ev.Revoked || ev.Reason != "grant revoked" || ev.Token != nil {
		t.Fatalf("revoked: %+v", ev)
	}
	// The subscription survives the purge: a new token for the key is delivered.
	if _, _, err := h.c.Get(context.Background(), k, 0, false); err != nil {
		t.Fatal(err)
	}
	if ev := recv(t, w); ev.Token == nil {
		t.Fatalf("after re-fetch: %+v", ev)
	}
}

func TestWatchUncachedKeyRevoked(t *testing.T) {
	h := newHarness(t, false, nil)
	k := testKey(1)
	w := h.c.Watch(k)
	defer w.Finish()
	noEvent(t, w)
	h.c.PurgeUser(k.UserOID, "logout")
	if ev := recv(t, w); !ev.Revoked {
		t.Fatalf("%+v", ev)
	}
}

func TestWatchManyRevocationPrompt(t *testing.T) {
	h := newHarness(t, false, nil)
	k := testKey(1)
	h.c.Put(k, tokenAt(t0, time.Hour, "x"))
	const n = 100
	subs := make([]*Subscriber, n)
	for i := range subs {
		subs[i] = h.c.Watch(k)
		defer subs[i].Finish()
	}
	// Half of the watchers never read the initial event: slow watchers must not block the purge.
	for i := 0; i < n; i += 2 {
		recv(t, subs[i])
	}
	start := time.Now()
	h.c.PurgeAgent(k.AgentAppID, "agent removed")
	if d := time.Since(start); d > time.Second {
		t.Errorf("purge with %d watchers took %v", n, d)
	}
	var wg sync.WaitGroup
	for _, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case ev := <-s.Updates():
				if !ev.Revoked || ev.Reason != "agent removed" {
					t.Errorf("%+v", ev)
				}
			case <-time.After(100 * time.Millisecond):
				t.Error("revocation not delivered promptly")
			}
		}()
	}
	wg.Wait()
}

func TestSubscriberLatestWinsAndFinish(t *testing.T) {
	h := newHarness(t, false, nil)
	k := testKey(1)
	w := h.c.Watch(k)
	for i := range 50 {
		h.c.Put(k, tokenAt(t0, time.Hour+time.Duration(i), "v"+string(rune('a'+i%26))))
	}
	h.c.Put(k, tokenAt(t0, 2*time.Hour, "latest"))
	if ev := recv(t, w); ev.Token == nil || ev.Token.AccessToken != "latest" {
		t.Fatalf("got %+v, want only the latest", ev)
	}
	noEvent(t, w)
	w.Finish()
	w.Finish() // idempotent
	if _, ok := <-w.Updates(); ok {
		t.Error("Updates not closed by Finish")
	}
	h.c.Purge(k, "after finish") // must not panic sending on the closed channel
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	if len(h.c.subs) != 0 {
		t.Error("finished subscriber still registered")
	}
}

func TestWatchFinishRacesNotify(t *testing.T) {
	h := newHarness(t, false, nil)
	k := testKey(1)
	var wg sync.WaitGroup
	for range 50 {
		w := h.c.Watch(k)
		wg.Add(2)
		go func() { defer wg.Done(); h.c.Put(k, tokenAt(t0, time.Hour, "x")) }()
		go func() { defer wg.Done(); w.Finish() }()
	}
	wg.Wait()
}
