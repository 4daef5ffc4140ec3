package cache

import "sync"

// Event is the latest state of a watched key. Token is the current token (never mutate it); nil means the watcher has
// no usable token: Revoked says it was purged (stop using it now), Expired that it expired without a replacement (the
// IdP unreachable until then, the user to act first, or the clock jumped past it during a suspend), and Reason says
// which. InteractionRequired comes with the still-valid token when a refresh needs the user to act first; the token
// will not be refreshed and is served until it expires.
type Event struct {
	Token               *Token
	Revoked             bool
	Expired             bool
	Reason              string
	InteractionRequired bool
}

// Subscriber receives Events for one key through a one-slot channel: a newer event replaces one not yet read, so a slow
// watcher sees the latest state and never blocks the cache. A subscriber outlives purges of its key: if the key is
// fetched again, the new token is delivered. Call Finish when done.
type Subscriber struct {
	c  *Cache
	id string
	// grant and bound are set by WatchGrant: the subscriber ends at its first revocation, and a purge of grant
	// revokes it.
	grant  string
	bound  bool
	mu     sync.Mutex
	ch     chan Event
	closed bool
	ended  bool // bound, and revoked: nothing more is delivered
}

type subGroup struct {
	key  Key
	subs map[*Subscriber]struct{}
}

func (g *subGroup) notify(ev Event) {
	for s := range g.subs {
		s.send(ev)
	}
}

// WatchGrant subscribes to k for a watcher that grantID authorized. It delivers nothing already cached,
// only what happens from now on (the caller hands out the token it got itself, after subscribing, so that no purge can
// fall between the two unheard), and it ends at its first revocation: a token stored after that (under another grant
// covering the same key) is not delivered. A purge of grantID revokes it whichever grant the cached token was minted
// under, two grants can cover one key, and even when nothing is cached.
func (c *Cache) WatchGrant(k Key, grantID string) *Subscriber {
	s := &Subscriber{c: c, id: k.ID(), grant: grantID, bound: true, ch: make(chan Event, 1)}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subscribeLocked(k, s)
	return s
}

// subscribeLocked adds s to the watchers of k.
func (c *Cache) subscribeLocked(k Key, s *Subscriber) {
	g := c.subs[s.id]
	if g == nil {
		g = &subGroup{key: k, subs: make(map[*Subscriber]struct{})}
		c.subs[s.id] = g
	}
	g.subs[s] = struct{}{}
}

// Updates returns the event channel; it is closed by Finish.
func (s *Subscriber) Updates() <-chan Event { return s.ch }

// Finish unsubscribes and closes Updates. It is idempotent.
func (s *Subscriber) Finish() {
	s.c.mu.Lock()
	if g := s.c.subs[s.id]; g != nil {
		delete(g.subs, s)
		if len(g.subs) == 0 {
			delete(s.c.subs, s.id)
		}
	}
	s.c.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.ch)
	}
}

// send replaces any unread event with ev. It never blocks: the only receiver is the watcher, and the slot is emptied
// before the send under s.mu, which every sender holds.
func (s *Subscriber) send(ev Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.ended {
		return
	}
	select {
	case <-s.ch:
	default:
	}
	s.ch <- ev
	// Latest-wins would let a token stored a moment later replace the revocation before the watcher reads it.
	s.ended = s.bound && ev.Revoked
}

func (c *Cache) notifyLocked(id string, ev Event) {
	if g := c.subs[id]; g != nil {
		g.notify(ev)
	}
}
