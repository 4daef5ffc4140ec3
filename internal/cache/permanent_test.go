package cache

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// A Get whose miss fails permanently (the forced fetch after a revoked sign-in, say) condemns what was cached for the
// key just as a failed refresh does, and the owner's wider purge has run by the time the caller hears of it.
func TestMissPermanentPurgesBeforeAnswering(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		wantPurge bool
	}{
		{"permanent", errPermanent, true},
		{"transient", errTransient, false},
		{"interaction", errInteraction, false},
		{"other", errors.New("fake: bug"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h *harness
			var widened atomic.Int64
			sibling := testKey(2)
			h = newHarness(t, false, func(o *Options) {
				o.OnPermanent = func(k Key, err error) {
					if !errors.Is(err, errPermanent) {
						t.Errorf("OnPermanent got %v", err)
					}
					widened.Add(int64(h.c.PurgeUser(k.UserOID, "test: sign-in revoked")))
				}
			})
			k := testKey(1)
			h.c.Put(k, tokenAt(t0, time.Hour, "cached"))
			h.c.Put(sibling, tokenAt(t0, time.Hour, "sibling"))
			w := h.c.Watch(k)
			defer w.Finish()
			if ev := recv(t, w); ev.Token == nil {
				t.Fatalf("first event %+v, want the token", ev)
			}
			h.idp.setErr(tt.err)
			_, _, err := h.c.Get(context.Background(), k, 0, true)
			if !errors.Is(err, tt.err) {
				t.Fatalf("Get: %v, want the fetcher's error", err)
			}
			_, kept := h.c.Lookup(k, 0)
			_, siblingKept := h.c.Lookup(sibling, 0)
			if kept == tt.wantPurge || siblingKept == tt.wantPurge {
				t.Errorf("after Get returned: key served %v, sibling served %v; want both %v", kept, siblingKept, !tt.wantPurge)
			}
			if tt.wantPurge {
				if widened.Load() != 1 {
					t.Errorf("the owner's purge removed %d tokens before Get returned, want the sibling", widened.Load())
				}
				if ev := recv(t, w); !ev.Revoked || ev.Reason == "" {
					t.Errorf("watcher event %+v, want a revocation with a reason", ev)
				}
			} else {
				noEvent(t, w)
			}
		})
	}
}

// Failures are not cached, so an agent retrying a key the IdP refuses for good fails again at its rate limit (200/s by
// default). Dropping that key is no purge another fetch can be caught by: its own flight was the only one for the key.
// Had each failure taken a purge epoch, a few hundred of them would overrun the purge log and every fetch outliving
// them, any agent's, would be discarded as ErrPurged. The failed key's watchers must still hear the revocation.
func TestPermanentFailuresDoNotDiscardOtherFetches(t *testing.T) {
	gate := make(chan struct{})
	a, b := agentKey("agent-a", 1), agentKey("agent-b", 1)
	h := newHarness(t, false, func(o *Options) {
		fetch := o.Fetch
		o.Fetch = func(ctx context.Context, k Key) (Token, error) {
			if k.AgentAppID == b.AgentAppID {
				return Token{}, errPermanent
			}
			select {
			case <-gate:
			case <-ctx.Done():
				return Token{}, ctx.Err()
			}
			return fetch(ctx, k)
		}
	})
	h.c.Put(b, tokenAt(t0, time.Hour, "b-cached"))
	w := h.c.Watch(b)
	defer w.Finish()
	if ev := recv(t, w); ev.Token == nil {
		t.Fatalf("first event %+v, want b's token", ev)
	}

	type result struct {
		tok Token
		err error
	}
	got := make(chan result, 1)
	go func() {
		tok, _, err := h.c.Get(context.Background(), a, time.Minute, false)
		got <- result{tok, err}
	}()
	waitFor(t, func() bool {
		h.c.mu.RLock()
		defer h.c.mu.RUnlock()
		return h.c.flights[a.ID()] != nil
	})

	for i := range purgeLogSize + 44 {
		// The first bypasses b's cached token (force_refresh); the rest miss, as b's token is gone.
		if _, _, err := h.c.Get(context.Background(), b, time.Minute, i == 0); !errors.Is(err, errPermanent) {
			t.Fatalf("b's Get %d: %v, want the permanent error", i, err)
		}
		if i == 0 {
			if _, ok := h.c.Peek(b); ok {
				t.Fatal("b's token still cached after its permanent failure")
			}
			if ev := recv(t, w); !ev.Revoked || ev.Reason == "" {
				t.Fatalf("b's watcher got %+v, want a revocation with a reason", ev)
			}
		}
	}
	if ev := recv(t, w); !ev.Revoked {
		t.Errorf("b's watcher got %+v after a refusal with nothing cached, want a revocation", ev)
	}
	close(gate)
	r := <-got
	if r.err != nil {
		t.Fatalf("a's Get: %v, want its token: b's failures purged nothing of a's", r.err)
	}
	if tok, ok := h.c.Peek(a); !ok || tok.AccessToken != r.tok.AccessToken {
		t.Errorf("a's token not cached (got %q, %v)", tok.AccessToken, ok)
	}
}
