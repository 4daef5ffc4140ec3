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
