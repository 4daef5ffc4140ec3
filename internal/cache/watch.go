package cache

import "sync"

// Event is the latest state of a watched key. Token is the current token (never mutate it); nil means the watcher has
// no usable token: Revoked says it was purged (stop using it now), otherwise it expired without a replacement.
// InteractionRequired comes with the still-valid token when a refresh needs the user to act first; the token will not
// be refreshed and is served until it expires.
type Event struct {
	Token               *Token
	Revoked             bool
	Reason              string
	InteractionRequired bool
}

// Subscriber receives Events for one key through a one-slot channel: a newer event replaces one not yet read, so a slow
// watcher sees the latest state and never blocks the cache. A subscriber outlives purges of its key: if the key is
// fetched again, the new token is delivered. Call Finish when done.
type Subscriber struct {
	c      *Cache
	id     string
	mu     sync.Mutex
	ch     chan Event
	closed bool
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

// Watch subscribes to k. If a usable token is cached, it is delivered at once.
func (c *Cache) Watch(k Key) *Subscriber {
	id := k.ID()
	s := &Subscriber{c: c, id: id, ch: make(chan Event, 1)}
	now := c.wallNow()
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.subs[id]
	if g == nil {
		g = &subGroup{key: k, subs: make(map[*Subscriber]struct{})}
		c.subs[id] = g
	}
	g.subs[s] = struct{}{}
	if e := c.entries[id]; e != nil && usable(&e.tok, now, 0) {
		tok := e.tok
		s.send(Event{Token: &tok, InteractionRequired: e.interaction})
	}
	return s
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
	if s.closed {
		return
	}
	select {
	case <-s.ch:
	default:
	}
	s.ch <- ev
}

func (c *Cache) notifyLocked(id string, ev Event) {
	if g := c.subs[id]; g != nil {
		g.notify(ev)
	}
}
