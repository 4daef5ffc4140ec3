package cache

import "container/heap"

type purgeKind uint8

const (
	purgeKey purgeKind = iota
	purgeUser
	purgeAgent
	purgeGrant
	purgeAll
	purgeMatching
)

// purgeRec is one purge, kept in a ring indexed by epoch so that a fetch finishing late can ask "was my key purged
// after I started?" without the purge having to know about fetches in flight.
type purgeRec struct {
	epoch uint64
	kind  purgeKind
	value string
	match func(Key) bool // purgeMatching only
}

func (r *purgeRec) matches(k Key, id, grantID string) bool {
	switch r.kind {
	case purgeAll:
		return true
	case purgeUser:
		return k.UserOID == r.value
	case purgeAgent:
		return k.AgentAppID == r.value
	case purgeGrant:
		return grantID != "" && grantID == r.value
	case purgeMatching:
		return r.match(k)
	default:
		return id == r.value
	}
}

// purgedSinceLocked reports whether a purge after epoch since covers k (or a token of grantID).
func (c *Cache) purgedSinceLocked(since uint64, k Key, id, grantID string) bool {
	if c.epoch == since {
		return false
	}
	if c.epoch-since > purgeLogSize {
		return true // the record has been overwritten: assume the worst
	}
	for ep := since + 1; ep <= c.epoch; ep++ {
		if r := &c.purges[ep%purgeLogSize]; r.matches(k, id, grantID) {
			return true
		}
	}
	return false
}

// mayBePurgedSinceLocked is purgedSinceLocked for a fetch still in flight, whose token's grant is not known yet: every
// grant purge since counts.
func (c *Cache) mayBePurgedSinceLocked(since uint64, k Key, id string) bool {
	if c.epoch == since {
		return false
	}
	if c.epoch-since > purgeLogSize {
		return true
	}
	for ep := since + 1; ep <= c.epoch; ep++ {
		if r := &c.purges[ep%purgeLogSize]; r.kind == purgeGrant || r.matches(k, id, "") {
			return true
		}
	}
	return false
}

// beginPurgeLocked records a purge; every fetch that started before it will be checked against it.
func (c *Cache) beginPurgeLocked(kind purgeKind, value string) *purgeRec {
	c.epoch++
	r := &c.purges[c.epoch%purgeLogSize]
	*r = purgeRec{epoch: c.epoch, kind: kind, value: value}
	return r
}

// removeLocked drops e from the cache and its indexes and sends ev to its watchers.
func (c *Cache) removeLocked(e *entry, ev Event) {
	delete(c.entries, e.id)
	delIndex(c.byUser, e.key.UserOID, e)
	delIndex(c.byAgent, e.key.AgentAppID, e)
	delIndex(c.byGrant, e.tok.GrantID, e)
	if e.heapIdx >= 0 {
		heap.Remove(&c.heap, e.heapIdx)
	}
	c.notifyLocked(e.id, ev)
}

// purgeSetLocked removes every entry of set, then tells the watchers of matching keys that have no entry (expired, or
// never fetched) too: a watcher must learn of a revocation even when no token was cached at the time. A grant purge
// also reaches every watcher that grant authorized (WatchGrant), whatever is cached for its key.
func (c *Cache) purgeSetLocked(set map[string]*entry, r *purgeRec, reason string) int {
	ev := Event{Revoked: true, Reason: reason}
	n := 0
	for _, e := range set {
		c.removeLocked(e, ev)
		n++
	}
	for id, g := range c.subs {
		if _, cached := c.entries[id]; !cached && r.matches(g.key, id, "") {
			g.notify(ev)
			continue
		}
		if r.kind == purgeGrant {
			for s := range g.subs {
				if s.grant == r.value {
					s.send(ev)
				}
			}
		}
	}
	return n
}

func (c *Cache) purgeKeyLocked(id, reason string) bool {
	r := c.beginPurgeLocked(purgeKey, id)
	var set map[string]*entry
	if e := c.entries[id]; e != nil {
		set = map[string]*entry{id: e}
	}
	return c.purgeSetLocked(set, r, reason) > 0
}

// dropFailedLocked removes id's token after its own fetch failed permanently and tells its watchers, as a key purge
// would, but takes no purge epoch. Epochs exist so that fetches in flight across a purge are discarded. The fetch that
// failed was the only one for id (runFlight removed it from flights under this same lock) and any later one starts
// after the removal, so no fetch could be caught by the record. Taking one anyway would let an agent retrying a refused
// key at its rate limit overrun the purge log within seconds, and every other agent's slower fetch be discarded as
// ErrPurged. A Get still waking from an earlier fetch of id may return that fetch's token: it asked before the refusal.
func (c *Cache) dropFailedLocked(id, reason string) {
	ev := Event{Revoked: true, Reason: reason}
	if e := c.entries[id]; e != nil {
		c.removeLocked(e, ev)
		return
	}
	// Watchers hear of the refusal even when nothing was cached, as they would of any purge.
	c.notifyLocked(id, ev)
}

// Purge removes k's token and notifies its watchers before it returns. It reports whether a token was cached.
func (c *Cache) Purge(k Key, reason string) bool {
	id := k.ID()
	c.mu.Lock()
	ok := c.purgeKeyLocked(id, reason)
	c.mu.Unlock()
	c.log.Info("purged cached token", append(keyAttrs(k), "found", ok, "reason", reason)...)
	return ok
}

// PurgeUser removes every token acting for userOID (logout, revoked sign-in) and returns how many there were.
func (c *Cache) PurgeUser(userOID, reason string) int {
	return c.purgeIndex(purgeUser, userOID, reason, func() map[string]*entry { return c.byUser[userOID] })
}

// PurgeAgent removes every token of agentAppID (agent removed or disabled).
func (c *Cache) PurgeAgent(agentAppID, reason string) int {
	return c.purgeIndex(purgeAgent, agentAppID, reason, func() map[string]*entry { return c.byAgent[agentAppID] })
}

// PurgeGrant removes every token issued under grantID (consent revoked, task ended).
func (c *Cache) PurgeGrant(grantID, reason string) int {
	if grantID == "" {
		return 0
	}
	return c.purgeIndex(purgeGrant, grantID, reason, func() map[string]*entry { return c.byGrant[grantID] })
}

// PurgeAll empties the cache (managed-policy change, shutdown of a session).
func (c *Cache) PurgeAll(reason string) int {
	return c.purgeIndex(purgeAll, "", reason, func() map[string]*entry { return c.entries })
}

// PurgeMatching removes every token whose key match accepts (a managed-policy change that narrows resources or modes),
// with the same guarantees as the other purges, and returns the keys of the tokens it removed. match runs under the
// cache's lock: it must not call into the cache.
func (c *Cache) PurgeMatching(match func(Key) bool, reason string) []Key {
	c.mu.Lock()
	r := c.beginPurgeLocked(purgeMatching, "")
	r.match = match
	set := map[string]*entry{}
	var removed []Key
	for id, e := range c.entries {
		if match(e.key) {
			set[id] = e
			removed = append(removed, e.key)
		}
	}
	c.purgeSetLocked(set, r, reason)
	c.mu.Unlock()
	if len(removed) > 0 { // it runs on every policy load, usually finding nothing: say only what it did
		c.log.Info("purged cached tokens", "scope", purgeMatching.String(), "count", len(removed), "reason", reason)
	}
	return removed
}

func (c *Cache) purgeIndex(kind purgeKind, value, reason string, set func() map[string]*entry) int {
	c.mu.Lock()
	r := c.beginPurgeLocked(kind, value)
	// removeLocked edits the index being ranged over; copy it first.
	src := set()
	cp := make(map[string]*entry, len(src))
	for id, e := range src {
		cp[id] = e
	}
	n := c.purgeSetLocked(cp, r, reason)
	c.mu.Unlock()
	c.log.Info("purged cached tokens", "scope", kind.String(), "count", n, "reason", reason)
	return n
}

func (k purgeKind) String() string {
	switch k {
	case purgeUser:
		return "user"
	case purgeAgent:
		return "agent"
	case purgeGrant:
		return "grant"
	case purgeAll:
		return "all"
	case purgeMatching:
		return "matching"
	default:
		return "key"
	}
}
