package cache

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A Get that begins after a purge returned must not wait on a fetch that began before it: that fetch's token is thrown
// away when it lands, and a caller who asked only after the revocation (signed in again, approved again) would be told
// its grant was revoked. It gets a fetch of its own; the caller who asked before the purge still gets ErrPurged.
func TestGetAfterPurgeDoesNotJoinAnEarlierFetch(t *testing.T) {
	for _, tt := range purgesOfKey {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, false, nil)
			h.idp.gate = make(chan struct{})
			h.idp.grant = "g1"
			k := testKey(1)
			before := make(chan error, 1)
			go func() {
				_, _, err := h.c.Get(context.Background(), k, time.Minute, false)
				before <- err
			}()
			waitFor(t, func() bool { return h.idp.inflight.Load() == 1 })
			tt.purge(h.c, k)

			type result struct {
				tok Token
				err error
			}
			after := make(chan result, 1)
			go func() {
				tok, _, err := h.c.Get(context.Background(), k, time.Minute, false)
				after <- result{tok, err}
			}()
			// The later Get either waits on the earlier fetch or starts its own; let it get that far, then let both
			// fetches answer.
			deadline := time.Now().Add(200 * time.Millisecond)
			for h.idp.inflight.Load() < 2 && time.Now().Before(deadline) {
				time.Sleep(100 * time.Microsecond)
			}
			close(h.idp.gate)

			if err := <-before; !errors.Is(err, ErrPurged) {
				t.Errorf("the Get from before the purge: %v, want ErrPurged", err)
			}
			r := <-after
			if r.err != nil {
				t.Fatalf("the Get from after the purge: %v, want a token", r.err)
			}
			if n := h.idp.calls.Load(); n != 2 {
				t.Errorf("%d fetches, want 2 (one on each side of the purge)", n)
			}
			if cur, ok := h.c.Lookup(k, 0); !ok || cur.AccessToken != r.tok.AccessToken {
				t.Errorf("cached %q (%v), want the token fetched after the purge %q", cur.AccessToken, ok, r.tok.AccessToken)
			}
		})
	}
	t.Run("an unrelated purge keeps one fetch per burst", func(t *testing.T) {
		h := newHarness(t, false, nil)
		h.idp.gate = make(chan struct{})
		k := testKey(1)
		errc := make(chan error, 2)
		get := func() {
			_, _, err := h.c.Get(context.Background(), k, time.Minute, false)
			errc <- err
		}
		go get()
		waitFor(t, func() bool { return h.idp.inflight.Load() == 1 })
		h.c.PurgeUser("someone-else", "r")
		h.c.PurgeAgent("another-agent", "r")
		go get()
		waitFor(t, func() bool {
			h.c.mu.Lock()
			defer h.c.mu.Unlock()
			return h.c.flights[k.ID()] != nil && h.c.flights[k.ID()].waiters == 2
		})
		close(h.idp.gate)
		for range 2 {
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		}
		if n := h.idp.calls.Load(); n != 1 {
			t.Errorf("%d fetches, want 1", n)
		}
	})
}
