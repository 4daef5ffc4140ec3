package daemon

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/agentidd/agentidd/internal/cache"
	"github.com/agentidd/agentidd/internal/entra"
)

// refusalMemory is how long a permanent refusal of an agent identity or a user's sign-in is answered from memory.
// Without it, an agent retrying at its rate limit (200/s by default) sends every miss to the IdP, which throttles the
// whole app for it, and each refusal repeats the wide purge: a store scan, an audit record, a warning, and a cache
// purge epoch, 256 of which within one slow fetch make other agents' fetches be discarded as purged. 30 s is short
// enough that an agent re-enabled at the IdP works again without a restart, and long enough to turn thousands of
// refused exchanges into one per subject.
const refusalMemory = 30 * time.Second

// idpRefusal is one permanent refusal being remembered.
type idpRefusal struct {
	err error     // the classified error, answered as is so callers see the same code and reason
	at  time.Time // on the daemon's clock
	// account is the sign-in a user refusal condemned (nil for an agent). The entra client makes a new Account at each
	// sign-in, so a refusal whose account is no longer the current one is over: the user signed in again, and the new
	// sign-in deserves a fresh answer from the IdP. Were the client ever to hand out copies, no user refusal would be
	// remembered and every miss would ask the IdP, as before: the safe side.
	account *entra.Account
	// handled is closed once the first refusal's purge, alert and audit record are done: a caller answered from memory
	// must not be released while sibling tokens of the condemned subject can still be served.
	handled chan struct{}
}

// idpRefusals remembers, per subject ("agent:<app id>", "user:<oid>"), the permanent refusal last handled.
type idpRefusals struct {
	now     func() time.Time
	account func() *entra.Account // the current sign-in
	rotated func() bool           // the blueprint credential changed since the IdP client read it

	mu sync.Mutex
	m  map[string]*idpRefusal
}

func newIdPRefusals(now func() time.Time, account func() *entra.Account, rotated func() bool) *idpRefusals {
	return &idpRefusals{now: now, account: account, rotated: rotated, m: map[string]*idpRefusal{}}
}

// rememberedError is a refusal answered from memory. It unwraps to the IdP's classified error, so the broker maps it to
// the same status; onPermanent knows by its type that the refusal was handled already.
type rememberedError struct{ r *idpRefusal }

func (e *rememberedError) Error() string { return e.r.err.Error() }
func (e *rememberedError) Unwrap() error { return e.r.err }

// refusedFetch carries a user refusal from the fetch to onPermanent with the sign-in the fetch used. The account
// current when onPermanent runs could be a newer sign-in, which the old one's refusal must not be remembered against.
type refusedFetch struct {
	err     error
	account *entra.Account
}

func (e *refusedFetch) Error() string { return e.err.Error() }
func (e *refusedFetch) Unwrap() error { return e.err }

// subjectOf names what a permanent refusal condemns, "" when it is not remembered: consent refusals (65001) concern one
// resource's scopes, and every other class is either transient or the caller's to act on.
func subjectOf(k cache.Key, e *entra.Error) string {
	if e == nil || e.Class != entra.ClassPermanent {
		return ""
	}
	switch e.Subject {
	case entra.SubjectAgent:
		return "agent:" + k.AgentAppID
	case entra.SubjectUser:
		return "user:" + k.UserOID
	}
	return ""
}

// fetch answers k from a remembered refusal of its agent or user, or runs f and marks a user refusal with the sign-in
// it was about.
func (rs *idpRefusals) fetch(ctx context.Context, k cache.Key, f func(context.Context) (cache.Token, error)) (cache.Token, error) {
	if r := rs.lookup(k); r != nil {
		return cache.Token{}, &rememberedError{r: r}
	}
	acct := rs.account()
	tok, err := f(ctx)
	if err != nil {
		if e := entra.Classify(err); e.Class == entra.ClassPermanent && e.Subject == entra.SubjectUser {
			err = &refusedFetch{err: err, account: acct}
		}
	}
	return tok, err
}

// lookup returns the refusal that still stands for k's agent or (for a key acting for the user) its user.
func (rs *idpRefusals) lookup(k cache.Key) *idpRefusal {
	now, current := rs.now(), rs.account()
	agent, user := "agent:"+k.AgentAppID, "user:"+k.UserOID
	rs.mu.Lock()
	if len(rs.m) == 0 {
		rs.mu.Unlock()
		return nil
	}
	byAgent := rs.m[agent]
	if byAgent != nil && !rs.liveLocked(agent, byAgent, now) {
		byAgent = nil
	}
	var byUser *idpRefusal
	// An app-only token is the agent's own: the user's sign-in plays no part in it.
	if r := rs.m[user]; r != nil && k.Mode != "app" && rs.liveLocked(user, r, now) && r.account == current {
		byUser = r
	}
	rs.mu.Unlock()

	// `agentidd secret set` is how a refused blueprint credential is mended: the next request tries the new one rather
	// than wait out the memory, and a refusal of it is news, handled in full. Reading the secret store happens outside
	// the lock, as every fetch already does once.
	if byAgent != nil && rs.rotated() {
		rs.mu.Lock()
		if rs.m[agent] == byAgent {
			delete(rs.m, agent)
		}
		rs.mu.Unlock()
		byAgent = nil
	}
	if byAgent != nil {
		return byAgent
	}
	return byUser
}

// liveLocked reports whether r is within refusalMemory of now, dropping it when not. A clock set back ends it too,
// rather than leave the refusal standing until the clock catches up.
func (rs *idpRefusals) liveLocked(subject string, r *idpRefusal, now time.Time) bool {
	if age := now.Sub(r.at); age >= 0 && age < refusalMemory {
		return true
	}
	delete(rs.m, subject)
	return false
}

// claim decides whether the permanent failure err of k's fetch is the first of its subject, to be handled in full. It
// returns the new refusal (the caller closes its handled channel when done) and true, or nil and false after waiting
// until the refusal already standing for the subject was handled. A failure it does not remember returns nil, true.
func (rs *idpRefusals) claim(k cache.Key, err error) (*idpRefusal, bool) {
	var remembered *rememberedError
	if errors.As(err, &remembered) {
		<-remembered.r.handled
		return nil, false
	}
	e := entra.Classify(err)
	subject := subjectOf(k, e)
	if subject == "" {
		return nil, true
	}
	var acct *entra.Account
	if e.Subject == entra.SubjectUser {
		acct = rs.account()
		var rf *refusedFetch
		if errors.As(err, &rf) {
			acct = rf.account
		}
	}
	now := rs.now()
	rs.mu.Lock()
	for s, r := range rs.m { // subjects never asked for again would otherwise stay for good
		rs.liveLocked(s, r, now)
	}
	// Fetches that reached the IdP before the first refusal was remembered fail the same way a moment later.
	if r := rs.m[subject]; r != nil && r.account == acct && rs.liveLocked(subject, r, now) {
		rs.mu.Unlock()
		<-r.handled
		return nil, false
	}
	r := &idpRefusal{err: e, at: now, account: acct, handled: make(chan struct{})}
	rs.m[subject] = r
	rs.mu.Unlock()
	return r, true
}
