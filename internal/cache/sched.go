package cache

import (
	"container/heap"
	"context"
	"errors"
	"time"
)

// dueHeap orders entries by their next scheduler action. One heap and one timer serve every token: the scheduler never
// holds a goroutine per token.
type dueHeap []*entry

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}
func (h *dueHeap) Push(x any) {
	e := x.(*entry)
	e.heapIdx = len(*h)
	*h = append(*h, e)
}
func (h *dueHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.heapIdx = -1
	return e
}

// scheduleLocked sets e's next action time and wakes the scheduler if that is now the earliest.
func (c *Cache) scheduleLocked(e *entry, due time.Time) {
	e.due = due
	if e.heapIdx >= 0 {
		heap.Fix(&c.heap, e.heapIdx)
	} else {
		heap.Push(&c.heap, e)
	}
	if e.heapIdx == 0 {
		c.signal()
	}
}

func (c *Cache) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Start runs the refresh scheduler until ctx is done. It returns at once; a second call does nothing. Wait blocks until
// the scheduler and its refreshes have stopped.
func (c *Cache) Start(ctx context.Context) {
	if !c.started.CompareAndSwap(false, true) {
		return
	}
	c.wg.Add(1)
	go c.run(ctx)
}

// Wait blocks until the goroutines Start began have returned (after its ctx is done). Without Start it returns at once.
func (c *Cache) Wait() { c.wg.Wait() }

func (c *Cache) run(ctx context.Context) {
	defer c.wg.Done()
	var timer *time.Timer
	if c.after == nil {
		timer = time.NewTimer(maxSleep)
		defer timer.Stop()
	}
	for {
		wait, dropped := c.step(ctx)
		if len(dropped) > 0 && c.onDropped != nil {
			c.onDropped(dropped)
		}
		var fire <-chan time.Time
		if timer != nil {
			timer.Reset(wait)
			fire = timer.C
		} else {
			fire = c.after(wait)
		}
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
		case <-fire:
		}
	}
}

// step performs every action that is due and returns how long to sleep before the next one, and the keys that left the
// cache without a purge since the last step (for OnDropped, which the caller runs without the lock).
func (c *Cache) step(ctx context.Context) (time.Duration, []Key) {
	now := c.wallNow()
	c.mu.Lock()
	defer c.mu.Unlock()
	wait := c.stepLocked(ctx, now)
	dropped := c.dropped
	c.dropped = nil
	return wait, dropped
}

func (c *Cache) stepLocked(ctx context.Context, now time.Time) time.Duration {
	for len(c.heap) > 0 {
		e := c.heap[0]
		if e.due.After(now) {
			return min(e.due.Sub(now), maxSleep)
		}
		if !usable(&e.tok, now, 0) {
			c.removeLocked(e, Event{Expired: true, Reason: c.expiredReasonLocked(e)})
			if c.onDropped != nil {
				c.dropped = append(c.dropped, e.key)
			}
			continue
		}
		if e.interaction || !c.wantedLocked(e, now) {
			// Nobody needs it refreshed: keep serving it until it expires, then drop it.
			c.scheduleLocked(e, e.tok.ExpiresAt)
			continue
		}
		select {
		case c.sem <- struct{}{}:
		default:
			// Every refresh slot is busy; a finishing refresh signals wake.
			return maxSleep
		}
		heap.Pop(&c.heap)
		c.wg.Add(1)
		go c.refresh(ctx, e, e.gen)
	}
	return maxSleep
}

// expiredReasonLocked says why e reached its expiry unreplaced, for its watchers: they hold that token and must ask
// again, and what to expect when they do depends on it.
func (c *Cache) expiredReasonLocked(e *entry) string {
	switch {
	case e.interaction:
		return "expired before it could be refreshed (the identity provider requires the user to act: agentidd login); ask again"
	case !c.online:
		return "expired before it could be refreshed (the identity provider was unreachable); ask again"
	case e.failures > 0:
		return "expired before it could be refreshed (every refresh failed); ask again"
	default:
		return "expired before it could be refreshed (the clock jumped past its expiry, as after a suspend); ask again"
	}
}

// wantedLocked: refresh ahead only what was used within the window, or what someone is watching.
func (c *Cache) wantedLocked(e *entry, now time.Time) bool {
	if now.UnixNano()-e.lastUsed.Load() <= int64(c.window) {
		return true
	}
	g := c.subs[e.id]
	return g != nil && len(g.subs) > 0
}

// refresh fetches a new token for e (sharing any fetch a Get already started) and handles a failure per its class.
func (c *Cache) refresh(ctx context.Context, e *entry, gen uint64) {
	defer func() {
		<-c.sem
		c.signal()
		c.wg.Done()
	}()
	c.mu.Lock()
	// stepLocked chose e under an earlier hold of the lock. If a purge (or a permanent failure) removed it since, a fetch
	// started now would begin after that purge's epoch, so nothing would stop its token being stored and persisted. A
	// newer token stored meanwhile was rescheduled by storeLocked and needs no refresh.
	if c.entries[e.id] != e || e.gen != gen {
		c.mu.Unlock()
		return
	}
	cl := c.joinLocked(ctx, e.key, e.id, 0, false)
	c.mu.Unlock()
	select {
	case <-cl.done:
	case <-ctx.Done():
		return
	}

	now := c.wallNow()
	var failures int
	c.mu.Lock()
	current := c.entries[e.id] == e && e.gen == gen && e.heapIdx < 0
	switch {
	case !current:
		// A newer token was stored, or the entry is gone (a permanent failure purged it in runFlight): that path has
		// done what is needed.
	case cl.err == nil || errors.Is(cl.err, ErrPurged):
		// Success stores a new token (and reschedules); reaching here means the result was not stored, so just keep
		// the old token until it expires.
		c.scheduleLocked(e, e.tok.ExpiresAt)
	default:
		switch cl.class {
		case Interaction:
			e.interaction = true
			c.scheduleLocked(e, e.tok.ExpiresAt)
			tok := e.tok
			c.notifyLocked(e.id, Event{Token: &tok, InteractionRequired: true, Reason: "the identity provider requires the user to act before the next refresh"})
		default:
			delay := c.backoff.Delay(e.failures)
			if c.retryAfter != nil {
				delay = max(delay, c.retryAfter(cl.err))
			}
			e.failures++
			due := now.Add(delay)
			if due.After(e.tok.ExpiresAt) {
				due = e.tok.ExpiresAt
			}
			// The cache's own retry time (noteErrorLocked) is left alone: one token's backoff says nothing of the
			// others, and would let every failing refresh reopen the gate for misses.
			c.scheduleLocked(e, due)
		}
	}
	failures = e.failures
	c.mu.Unlock()
	if current && cl.err != nil && !errors.Is(cl.err, ErrPurged) {
		c.log.Warn("token refresh failed", append(keyAttrs(e.key), "class", cl.class.String(), "failures", failures)...)
	}
}
