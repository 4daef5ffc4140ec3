package cache

import (
	"context"
	"testing"
	"time"
)

// A watcher bound to a grant hears of that grant's purge when the cached token was minted under another grant and when
// nothing is cached, and once revoked it is handed no later token.
func TestWatchGrant(t *testing.T) {
	h := newHarness(t, false, nil)
	k := testKey(1)
	tok := tokenAt(t0, time.Hour, "minted-under-g1")
	tok.GrantID = "g1"
	h.c.Put(k, tok)

	underG2 := h.c.WatchGrant(k, "g2")
	defer underG2.Finish()
	noEvent(t, underG2) // nothing already cached is delivered: the caller hands out its own first token
	h.c.PurgeGrant("g3", "unrelated")
	noEvent(t, underG2)
	h.c.PurgeGrant("g2", "task ended")
	if ev := recv(t, underG2); !ev.Revoked || ev.Reason != "task ended" {
		t.Fatalf("event %+v, want the revocation of g2", ev)
	}
	if _, ok := h.c.Lookup(k, 0); !ok {
		t.Fatal("g1's token was purged with g2")
	}
	// Ended: nothing follows the revocation, not even a token stored later under g1.
	h.c.PurgeGrant("g2", "task ended")
	if _, _, err := h.c.Get(context.Background(), k, 0, true); err != nil {
		t.Fatal(err)
	}
	noEvent(t, underG2)

	h.c.Purge(k, "expired meanwhile") // nothing cached for k now
	uncached := h.c.WatchGrant(k, "g4")
	defer uncached.Finish()
	h.c.PurgeGrant("g4", "revoked by the user")
	if ev := recv(t, uncached); !ev.Revoked {
		t.Fatalf("event %+v, want a revocation with nothing cached", ev)
	}
}
