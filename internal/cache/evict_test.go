package cache

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// droppedKeys collects what OnDropped reports.
type droppedKeys struct {
	mu   sync.Mutex
	keys []string
}

func (d *droppedKeys) add(keys []Key) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, k := range keys {
		d.keys = append(d.keys, k.ID())
	}
}

// wait returns the reported key IDs once there are n of them.
func (d *droppedKeys) wait(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		d.mu.Lock()
		got := slices.Clone(d.keys)
		d.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("OnDropped reported %d keys, want %d", len(got), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func agentKey(agent string, i int) Key {
	k := testKey(i)
	k.AgentAppID = agent
	return k
}

// TestMaxPerAgentEvictsLeastRecentlyUsed: an agent over its cap loses its least recently used token, never a watched
// one, never another agent's; the owner hears of the eviction so it can drop its persisted copy.
func TestMaxPerAgentEvictsLeastRecentlyUsed(t *testing.T) {
	var dropped droppedKeys
	h := newHarness(t, true, func(o *Options) {
		o.MaxPerAgent = 3
		o.OnDropped = dropped.add
	})
	ctx := context.Background()
	get := func(k Key) {
		t.Helper()
		if _, _, err := h.c.Get(ctx, k, 0, false); err != nil {
			t.Fatal(err)
		}
	}
	a0, a1, a2, a3 := agentKey("agent-a", 0), agentKey("agent-a", 1), agentKey("agent-a", 2), agentKey("agent-a", 3)
	others := []Key{agentKey("agent-b", 0), agentKey("agent-b", 1), agentKey("agent-b", 2)}
	for _, k := range others {
		get(k)
	}
	for i, k := range []Key{a0, a1, a2} {
		h.set(t0.Add(time.Duration(2*i) * time.Second))
		get(k)
	}
	h.set(t0.Add(6 * time.Second))
	if _, ok := h.c.Lookup(a0, 0); !ok { // a0 is now the most recently used; a1 the least
		t.Fatal("a0 not cached")
	}
	w := h.c.Watch(a1) // a watched token is in use, whatever its last GetToken
	defer w.Finish()
	recv(t, w)

	get(a3)
	for _, k := range []Key{a0, a1, a3} {
		if _, ok := h.c.Peek(k); !ok {
			t.Errorf("%s was evicted", k.Scopes[0])
		}
	}
	if _, ok := h.c.Peek(a2); ok {
		t.Error("a2, the least recently used unwatched token, is still cached")
	}
	for _, k := range others {
		if _, ok := h.c.Peek(k); !ok {
			t.Error("another agent's token was evicted")
		}
	}
	if got := dropped.wait(t, 1); !slices.Equal(got, []string{a2.ID()}) {
		t.Errorf("OnDropped got %q, want only a2", got)
	}
	if st := h.c.Stats(); st.Entries != 6 {
		t.Errorf("%d tokens cached, want 6 (3 per agent)", st.Entries)
	}
}

// TestOnDroppedReportsExpiry: tokens that expire leave the cache and OnDropped hears of them; a purge does not report
// (its caller deletes the persisted copies itself).
func TestOnDroppedReportsExpiry(t *testing.T) {
	var dropped droppedKeys
	h := newHarness(t, true, func(o *Options) { o.OnDropped = dropped.add })
	k0, k1 := testKey(0), testKey(1)
	h.c.Put(k0, tokenAt(t0, time.Hour, "t0"))
	h.c.Put(k1, tokenAt(t0, time.Hour, "t1"))
	h.c.Purge(k1, "test")
	h.set(t0.Add(time.Hour + time.Second))
	dropped.wait(t, 1)
	time.Sleep(20 * time.Millisecond) // room for a wrong second report
	if got := dropped.wait(t, 1); !slices.Equal(got, []string{k0.ID()}) {
		t.Errorf("OnDropped got %q, want only the expired k0", got)
	}
}

// TestSetLimitsLowersTheCap: after the cap is lowered, the agent's next new token brings it down to the new cap at once.
func TestSetLimitsLowersTheCap(t *testing.T) {
	var dropped droppedKeys
	h := newHarness(t, true, func(o *Options) {
		o.MaxPerAgent = 5
		o.OnDropped = dropped.add
	})
	for i := range 5 {
		if _, _, err := h.c.Get(context.Background(), testKey(i), 0, false); err != nil {
			t.Fatal(err)
		}
	}
	h.c.SetLimits(0, 2)
	if _, _, err := h.c.Get(context.Background(), testKey(5), 0, false); err != nil {
		t.Fatal(err)
	}
	if st := h.c.Stats(); st.Entries != 2 {
		t.Errorf("%d tokens cached after lowering the cap to 2", st.Entries)
	}
	if _, ok := h.c.Peek(testKey(5)); !ok {
		t.Error("the token just stored was evicted")
	}
	dropped.wait(t, 4)
}
