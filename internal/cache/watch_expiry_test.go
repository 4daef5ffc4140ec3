package cache

import (
	"strings"
	"testing"
	"time"
)

// TestWatchedTokenExpiredEvent: a watched token the clock jumps past (a suspend), or that runs out while every refresh
// fails offline, is dropped with an Expired event whose reason says why, so its watcher can stop using it.
func TestWatchedTokenExpiredEvent(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		offline    bool
	}{
		{"suspend", "clock jumped", false},
		{"offline", "unreachable", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, true, func(o *Options) { o.Jitter = -1 })
			k := testKey(1)
			h.c.Put(k, tokenAt(t0, time.Hour, "watched"))
			w := h.c.WatchGrant(k, "g1")
			defer w.Finish()
			if tc.offline {
				h.idp.setErr(errTransient)
				h.set(t0.Add(50 * time.Minute))
				if online, _ := h.c.Online(); online {
					t.Fatal("online after a failed refresh")
				}
			}
			h.set(t0.Add(2 * time.Hour))
			ev := recv(t, w)
			if !ev.Expired || ev.Revoked || ev.Token != nil || !strings.Contains(ev.Reason, tc.want) || !strings.Contains(ev.Reason, "ask again") {
				t.Errorf("event %+v, want Expired saying %q and to ask again", ev, tc.want)
			}
		})
	}
}
