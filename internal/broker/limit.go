package broker

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// limiter is a token bucket per attested agent, so one looping agent is refused (RESOURCE_EXHAUSTED) without slowing
// anyone else down.
type limiter struct {
	r     rate.Limit
	burst int
	mu    sync.Mutex
	m     map[string]*rate.Limiter
}

func newLimiter(perSecond float64, burst int) *limiter {
	return &limiter{r: rate.Limit(perSecond), burst: burst, m: map[string]*rate.Limiter{}}
}

// allow reports whether the agent may proceed, and if not how long until it may.
func (l *limiter) allow(agent string) (bool, time.Duration) {
	l.mu.Lock()
	lim, ok := l.m[agent]
	if !ok {
		lim = rate.NewLimiter(l.r, l.burst)
		l.m[agent] = lim
	}
	l.mu.Unlock()
	if lim.Allow() { // no allocation on the fast path; Reserve only to tell a refused caller when to come back
		return true, 0
	}
	r := lim.Reserve()
	d := r.Delay()
	r.Cancel()
	return false, max(d, time.Millisecond)
}
