// Package cache is agentidd's serving cache: the fast path of DESIGN.md §2 and the time, refresh, offline and
// revocation rules of §6.
//
// # Contract
//
// A token is served (Lookup, Get) only while it has at least the caller's minimum lifetime left, measured on the wall
// clock with the monotonic reading stripped. Go's monotonic clock stops while a laptop sleeps, so a token whose expiry
// passed during a suspend is never served, however little time the process itself saw pass.
//
// Get deduplicates concurrent misses per key (singleflight). The shared fetch runs on a context detached from every
// caller, with Options.FetchTimeout: a caller that gives up gets ctx.Err() and the others still get the token. A caller
// whose context has a deadline gets ErrNoAnswerYet shortly before that deadline instead (see answerReserve), so that it
// hears why rather than seeing its own deadline pass; the fetch goes on and its token is cached.
//
// Tokens used within Options.RefreshWindow, or watched, are refreshed ahead of expiry at Token.RefreshAt with ±Jitter,
// by one scheduler goroutine (a single timer over a min-heap) and at most Options.MaxConcurrentRefresh fetches at once.
// Unused tokens are not refreshed; they are dropped when they expire, which bounds memory.
//
// # Offline
//
// A transient fetch failure (a refresh's or a miss's) makes the cache offline and sets its retry time: one backoff step
// ahead, or the failure's Retry-After if longer, the step growing once per retry window rather than per failed request.
// Until then a Get that would start an exchange gets *OfflineError at once, without a fetch; one that finds an exchange
// in flight for its key joins it. Misses wait at most missGate after the latest transient failure, and then one at a
// time: the first is a probe, and its success puts the cache back online.
//
// # Refresh failures
//
//   - Transient: the still-valid token keeps being served, the cache reports itself offline (Online, Stats) and the
//     refresh is retried with capped exponential backoff and jitter until it succeeds or the token expires.
//   - Other (neither the network's nor the IdP's verdict, e.g. a bug): retried like Transient, but Online is unchanged,
//     because the IdP may well be reachable.
//   - Permanent: the key is purged at once, its watchers get Event{Revoked: true}, and Options.OnPermanent is called
//     (outside every lock) so the owner can purge more widely (all of a user's or an agent's tokens). The same holds
//     when a Get's miss fails permanently, and both happen before any caller waiting on that fetch is answered.
//   - Interaction: the token stays and is served until it expires, because it is still valid and cutting an agent off
//     mid-task would gain nothing: the IdP wants the user to act before it issues the next one, not a revocation. The
//     cache stops retrying (retrying cannot help until the user acts), tells watchers with Event{InteractionRequired:
//     true} carrying the still-valid token, and drops the entry at expiry; the next Get then fetches and the caller
//     sees the interaction error itself.
//
// # Revocation
//
// Purge, PurgeUser, PurgeAgent, PurgeGrant and PurgeAll remove the matching tokens and notify their watchers before
// they return. A fetch that was in flight when a purge touching its key began is not stored and its waiters get
// ErrPurged, even if the fetch finishes afterwards: a token minted under a grant being revoked must not outlive the
// revocation. Every purge takes a new epoch; each fetch remembers the epoch it started in and checks the purges since
// when it finishes. A Get that arrives after such a purge starts a fetch of its own rather than wait on the doomed one.
//
// Cached tokens are shared: a Token handed to or returned by this package must never be mutated (its Scopes are not
// copied).
package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Token is one access token as served. Immutable once cached: never mutate it or its Scopes.
type Token struct {
	AccessToken string `json:"access_token"`
	// ExpiresAt is the local receive time plus expires_in, wall clock only (t.Round(0)), which tolerates a wrong system
	// clock better than the token's own exp claim.
	ExpiresAt time.Time `json:"expires_at"`
	// RefreshAt is when to refresh ahead: from refresh_in when the IdP sent it, else IssuedAt + 75% of the lifetime
	// (filled in when zero). The scheduler applies the jitter.
	RefreshAt time.Time `json:"refresh_at"`
	IssuedAt  time.Time `json:"issued_at"`
	Scopes    []string  `json:"scopes,omitempty"`
	GrantID   string    `json:"grant_id,omitempty"`
	// Fingerprint names the token in audit records without revealing it: the first 16 hex digits of SHA-256 of
	// AccessToken. The cache fills it in once when the token is stored, so a cached hit does not hash the token again.
	Fingerprint string `json:"-"`
}

// Fingerprint is the first 16 hex digits of SHA-256(accessToken): enough to match a token someone holds against the
// audit log, useless for replay.
func Fingerprint(accessToken string) string {
	if accessToken == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(accessToken))
	return hex.EncodeToString(sum[:8])
}

// Entry is one cached token with its key, as Snapshot returns it for persisting.
type Entry struct {
	Key   Key
	Token Token
}

// Source says where Get found the token.
type Source string

const (
	SourceCache Source = "cache"
	SourceIDP   Source = "idp"
)

// Class is what a fetch error means to the cache. The owner maps its IdP classifier onto it (Options.Classify).
type Class int

const (
	Other Class = iota
	Transient
	Permanent
	Interaction
)

func (c Class) String() string {
	switch c {
	case Transient:
		return "transient"
	case Permanent:
		return "permanent"
	case Interaction:
		return "interaction_required"
	default:
		return "other"
	}
}

// Fetcher performs the IdP exchange for k. Its errors are returned to Get's callers unchanged.
type Fetcher func(ctx context.Context, k Key) (Token, error)

// Backoff bounds the retry delay after transient failures: Min doubling per failure up to Max, with jitter.
type Backoff struct {
	Min time.Duration
	Max time.Duration
}

// Delay is the wait before retry number n (0 for the first retry): min(Max, Min·2ⁿ) with "equal jitter", i.e. a uniform
// pick in its upper half. Keeping the lower half out guarantees the delay grows, while the upper half de-synchronizes
// many entries failing at the same moment.
func (b Backoff) Delay(n int) time.Duration {
	d := b.Min
	for i := 0; i < n && d < b.Max; i++ {
		if d > b.Max/2 {
			d = b.Max // doubling would pass Max, or overflow for a huge Max
			break
		}
		d *= 2
	}
	d = min(d, b.Max)
	if d <= 0 {
		return 0
	}
	half := d / 2
	return half + rand.N(d-half+1)
}

// Options configures a Cache. Every field has a default.
type Options struct {
	Now   func() time.Time // wall clock; default time.Now
	Fetch Fetcher
	// RefreshWindow: only tokens used (or watched) within this window are refreshed ahead. Default 15m.
	RefreshWindow time.Duration
	// Jitter is the ± fraction of the time-to-refresh applied to each refresh time. Default 0.1; negative disables it;
	// capped at 0.5.
	Jitter float64
	// Classify maps fetch errors to classes; default: every error is Other.
	Classify func(error) Class
	// OnPermanent runs after a fetch (a refresh or a Get's miss) failed permanently and k was purged, before the fetch's
	// waiters are answered; no cache lock is held, so it may purge more. It must not call Get for k.
	OnPermanent func(k Key, err error)
	// OnStored runs after a fetched token was stored (no cache lock held), e.g. to persist it. A purge may race with it:
	// the owner re-checks with Peek under its own lock, and purges the cache before its own copy.
	OnStored func(k Key, t Token)
	// RetryAfter optionally extracts the IdP's requested delay (429 Retry-After); it is a floor for the backoff.
	RetryAfter func(error) time.Duration
	// Answered optionally reports whether a failed fetch's error is the IdP's own answer (a refusal, a challenge), as
	// opposed to one decided locally or a transport failure. An answer shows the IdP is reachable: an offline cache
	// goes back online rather than keep holding misses back with IDP_UNREACHABLE.
	Answered func(error) bool
	// Backoff for transient refresh failures. Default 1s to 5m.
	Backoff Backoff
	// MaxConcurrentRefresh caps background refreshes in flight, so a thousand tokens due at once cannot become a storm.
	// Default 4.
	MaxConcurrentRefresh int
	// MaxPerAgent caps how many tokens one agent may have cached. Storing one more evicts that agent's least recently
	// used token that nobody watches and no refresh is fetching. Without a cap a local agent could make the daemon hold
	// a token for every claims challenge or scope set it cares to ask for. Default 1,000; negative: no cap.
	MaxPerAgent int
	// OnDropped runs with the keys whose tokens left the cache without a purge (expired, or evicted by MaxPerAgent), in
	// batches, from the scheduler goroutine, with no cache lock held: the owner drops its persisted copies. A key may have
	// been stored again since; re-check with Peek.
	OnDropped func(keys []Key)
	// FetchTimeout bounds each fetch, which runs detached from its callers' contexts. Default 30s.
	FetchTimeout time.Duration
	// After replaces time.After for the scheduler's sleeps (tests drive it with a fake clock). Default: a real timer.
	After func(time.Duration) <-chan time.Time
	Log   *slog.Logger
}

var (
	// ErrTooShort: the IdP issued a token with less than the requested minimum lifetime left.
	ErrTooShort = errors.New("cache: the identity provider issued a token shorter than the requested minimum lifetime")
	// ErrPurged: the key was purged (revoked) while its token was being fetched; the token was discarded. The caller
	// should re-check authorization before asking again.
	ErrPurged = errors.New("cache: the token was revoked while it was being fetched")
	// ErrNoFetcher: Get missed and Options.Fetch is nil.
	ErrNoFetcher = errors.New("cache: no fetcher configured")
	// ErrNoAnswerYet: the caller's deadline is about to pass and the shared fetch has not finished. It continues; the
	// token it brings is cached for the next Get.
	ErrNoAnswerYet = errors.New("cache: the identity provider has not answered yet")
	// ErrInvalidToken: the fetcher returned a token without an access token or expiry.
	ErrInvalidToken = errors.New("cache: the fetcher returned a token without an access token or expiry")
)

// OfflineError answers a miss while the cache is offline and its retry time has not come: the IdP is not asked. It
// unwraps to the latest transient failure, so whoever classifies that failure classifies this answer the same way.
type OfflineError struct {
	// RetryIn is how long until the cache's retry time (1 s when that has passed and a probe is still out).
	RetryIn time.Duration
	Err     error
}

func (e *OfflineError) Error() string {
	// Err's own text is left out: a fetcher's error may quote a URL or an IdP body.
	return "cache: offline, the identity provider is not asked again before the retry time"
}

func (e *OfflineError) Unwrap() error { return e.Err }

const (
	// maxSleep bounds every scheduler sleep. Timers run on the monotonic clock, which stops during suspend; waking at
	// least this often lets the scheduler act within seconds of a resume (or any wall-clock jump) on what fell due
	// meanwhile, before those tokens run out. A wake-up is a heap peek under the lock.
	maxSleep = 5 * time.Second
	// touchEvery limits how often a hit writes the entry's last-used time, so parallel hits on one hot key do not all
	// write the same cache line.
	touchEvery = int64(time.Second)
	// purgeLogSize is how many recent purges in-flight fetches can be checked against. A fetch that outlives more
	// purges than this is discarded conservatively.
	purgeLogSize = 256

	defaultRefreshWindow = 15 * time.Minute
	defaultMaxPerAgent   = 1000

	// missGate is the longest our own backoff keeps misses from the IdP. The refresh backoff grows to 5 minutes, which
	// suits tokens still being served, but an agent with nothing cached waits on the IdP's return: one probe per
	// missGate notices it soon enough and costs a down IdP next to nothing. An IdP that asked for longer (Retry-After)
	// is not asked sooner.
	missGate = 30 * time.Second
)

// Cache is the serving cache. Create it with New; it is safe for concurrent use.
type Cache struct {
	now          func() time.Time
	fetch        Fetcher
	window       time.Duration
	jitter       float64
	classify     func(error) Class
	onPermanent  func(Key, error)
	onStored     func(Key, Token)
	onDropped    func([]Key)
	maxPerAgent  int
	retryAfter   func(error) time.Duration
	answered     func(error) bool
	backoff      Backoff
	fetchTimeout time.Duration
	after        func(time.Duration) <-chan time.Time
	log          *slog.Logger

	sem     chan struct{} // one slot per background refresh in flight
	wake    chan struct{} // nudges the scheduler: new earliest due time, or a refresh slot freed
	started atomic.Bool
	wg      sync.WaitGroup

	mu      sync.RWMutex
	entries map[string]*entry
	byUser  map[string]map[string]*entry
	byAgent map[string]map[string]*entry
	byGrant map[string]map[string]*entry
	heap    dueHeap
	flights map[string]*call
	subs    map[string]*subGroup
	epoch   uint64 // number of purges so far
	purges  [purgeLogSize]purgeRec

	dropped []Key // left the cache without a purge, for onDropped; the scheduler hands them over

	online       bool
	failures     int // backoff windows that ended in a transient failure since the last success
	lastErrClass string
	lastErr      time.Time
	retryAt      time.Time
	// lastTransient and lastTransientErr are the latest transient failure, from a miss or a refresh: the miss gate is
	// measured from it, and a gated miss answers with it.
	lastTransient    time.Time
	lastTransientErr error
	// throttledUntil is the end of the longest Retry-After the IdP has sent: no miss probes it before then.
	throttledUntil time.Time
	probe          *call // the miss sent to the IdP while offline, if it is still out
}

type entry struct {
	id          string
	key         Key
	tok         Token
	gen         uint64       // bumped on every new token, so a late refresh result can tell it is stale
	lastUsed    atomic.Int64 // wall-clock UnixNano of the latest hit; 0 when never used
	due         time.Time    // next scheduler action: refresh, retry, or drop at expiry
	heapIdx     int          // -1 while a refresh is running
	failures    int          // consecutive failed refreshes of this token
	interaction bool         // the IdP wants the user to act: serve until expiry, do not refresh
}

// call is one in-flight fetch shared by every Get for the same key.
type call struct {
	done       chan struct{}
	waiters    int
	tok        Token
	err        error
	class      Class
	startEpoch uint64 // purges up to here happened before the fetch began
	doneEpoch  uint64 // purges up to here were checked when the fetch finished
}

// New returns a Cache. Call Start to run the refresh scheduler.
func New(o Options) *Cache {
	c := &Cache{
		now:          o.Now,
		fetch:        o.Fetch,
		window:       o.RefreshWindow,
		jitter:       o.Jitter,
		classify:     o.Classify,
		onPermanent:  o.OnPermanent,
		onStored:     o.OnStored,
		onDropped:    o.OnDropped,
		maxPerAgent:  o.MaxPerAgent,
		retryAfter:   o.RetryAfter,
		answered:     o.Answered,
		backoff:      o.Backoff,
		fetchTimeout: o.FetchTimeout,
		after:        o.After,
		log:          o.Log,
		entries:      make(map[string]*entry),
		byUser:       make(map[string]map[string]*entry),
		byAgent:      make(map[string]map[string]*entry),
		byGrant:      make(map[string]map[string]*entry),
		flights:      make(map[string]*call),
		subs:         make(map[string]*subGroup),
		wake:         make(chan struct{}, 1),
		online:       true,
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.window <= 0 {
		c.window = defaultRefreshWindow
	}
	switch {
	case c.jitter == 0:
		c.jitter = 0.1
	case c.jitter < 0:
		c.jitter = 0
	case c.jitter > 0.5:
		c.jitter = 0.5
	}
	if c.classify == nil {
		c.classify = func(error) Class { return Other }
	}
	if c.backoff.Min <= 0 {
		c.backoff.Min = time.Second
	}
	if c.backoff.Max < c.backoff.Min {
		c.backoff.Max = max(5*time.Minute, c.backoff.Min)
	}
	if c.maxPerAgent == 0 {
		c.maxPerAgent = defaultMaxPerAgent
	}
	if c.fetchTimeout <= 0 {
		c.fetchTimeout = 30 * time.Second
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	n := o.MaxConcurrentRefresh
	if n <= 0 {
		n = 4
	}
	c.sem = make(chan struct{}, n)
	return c
}

// wallNow is the injected clock with the monotonic reading stripped: every expiry comparison is on the wall clock.
func (c *Cache) wallNow() time.Time { return c.now().Round(0) }

// usable reports whether t may be served at now to a caller that needs minTTL.
func usable(t *Token, now time.Time, minTTL time.Duration) bool {
	left := t.ExpiresAt.Sub(now)
	return left > 0 && left >= minTTL
}

func (e *entry) touch(now time.Time) {
	n := now.UnixNano()
	if n-e.lastUsed.Load() >= touchEvery {
		e.lastUsed.Store(n)
	}
}

// Peek returns the cached token for k, valid or not, without counting it as a use.
func (c *Cache) Peek(k Key) (Token, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e := c.entries[k.ID()]
	if e == nil {
		return Token{}, false
	}
	return e.tok, true
}

// Lookup is the fast path: a map lookup under a read lock and an expiry check, no I/O and no allocation. A hit marks the
// entry used, which is what makes it eligible for refresh ahead.
func (c *Cache) Lookup(k Key, minTTL time.Duration) (Token, bool) {
	id := k.id
	var buf [256]byte
	idBytes := buf[:0]
	if id == "" {
		idBytes = appendID(idBytes, k)
	}
	now := c.wallNow()
	c.mu.RLock()
	defer c.mu.RUnlock()
	var e *entry
	if id != "" {
		e = c.entries[id]
	} else {
		e = c.entries[string(idBytes)]
	}
	if e == nil || !usable(&e.tok, now, minTTL) {
		return Token{}, false
	}
	e.touch(now)
	return e.tok, true
}

// Get returns a token for k with at least minTTL left: from the cache unless force, else from one fetch shared by every
// concurrent Get for k. See the package doc for cancellation and purge semantics.
func (c *Cache) Get(ctx context.Context, k Key, minTTL time.Duration, force bool) (Token, Source, error) {
	if !force {
		if t, ok := c.Lookup(k, minTTL); ok {
			return t, SourceCache, nil
		}
	}
	if c.fetch == nil {
		return Token{}, "", ErrNoFetcher
	}
	if err := ctx.Err(); err != nil {
		return Token{}, "", err
	}
	id := k.ID()
	now := c.wallNow()
	c.mu.Lock()
	// Check again under the write lock: a fetch for k may have finished between Lookup and here, and starting a second
	// one would break "one fetch per burst of misses".
	if e := c.entries[id]; !force && e != nil && usable(&e.tok, now, minTTL) {
		e.touch(now)
		t := e.tok
		c.mu.Unlock()
		return t, SourceCache, nil
	}
	cl := c.flights[id]
	if cl == nil || c.mayBePurgedSinceLocked(cl.startEpoch, k, id) {
		// A new exchange. While offline, only one miss at a time and at most one per retry window reaches the IdP:
		// without this every miss of a burst, and every force_refresh, is another request at an IdP that is down
		// (or another hung connection to one that hangs).
		if off := c.offlineLocked(now); off != nil {
			c.mu.Unlock()
			return Token{}, "", off
		}
	}
	cl = c.joinLocked(context.WithoutCancel(ctx), k, id, minTTL, true)
	if !c.online && cl.waiters == 1 {
		c.probe = cl
	}
	c.mu.Unlock()

	var giveUp <-chan time.Time
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		t := time.NewTimer(left - answerReserve(left))
		defer t.Stop()
		giveUp = t.C
	}
	select {
	case <-cl.done:
	case <-giveUp:
		return Token{}, "", ErrNoAnswerYet
	case <-ctx.Done():
		return Token{}, "", ctx.Err()
	}
	if cl.err != nil {
		return Token{}, "", cl.err
	}
	c.mu.RLock()
	purged := c.purgedSinceLocked(cl.doneEpoch, k, id, cl.tok.GrantID)
	c.mu.RUnlock()
	if purged {
		return Token{}, "", ErrPurged
	}
	if !usable(&cl.tok, c.wallNow(), minTTL) {
		return Token{}, "", ErrTooShort
	}
	return cl.tok, SourceIDP, nil
}

// answerReserve is how long before a caller's deadline Get stops waiting on a fetch: long enough for the answer to
// cross a local socket and be read, a tenth of the time the caller allowed and never more than 250 ms.
func answerReserve(left time.Duration) time.Duration {
	return min(left/10, 250*time.Millisecond)
}

// joinLocked returns the in-flight fetch for id, starting one if there is none, or if the one in flight began before a
// purge that may cover k: its token will be discarded when it lands, and a caller arriving after the revocation (signed
// in again, approved again) must not be told of a revocation that preceded its request. storeMin is the lifetime a new
// token needs to be worth caching; fromGet marks the result as used (a refresh does not count as use).
func (c *Cache) joinLocked(parent context.Context, k Key, id string, storeMin time.Duration, fromGet bool) *call {
	if cl := c.flights[id]; cl != nil && !c.mayBePurgedSinceLocked(cl.startEpoch, k, id) {
		cl.waiters++
		return cl
	}
	cl := &call{done: make(chan struct{}), waiters: 1, startEpoch: c.epoch}
	c.flights[id] = cl
	go c.runFlight(parent, k, id, cl, storeMin, fromGet)
	return cl
}

func (c *Cache) runFlight(parent context.Context, k Key, id string, cl *call, storeMin time.Duration, fromGet bool) {
	ctx, cancel := context.WithTimeout(parent, c.fetchTimeout)
	tok, err := c.safeFetch(ctx, k)
	cancel()
	now := c.wallNow()
	if err == nil && (tok.AccessToken == "" || tok.ExpiresAt.IsZero()) {
		err = ErrInvalidToken
	}

	var class Class
	stored := false
	c.mu.Lock()
	if c.flights[id] == cl {
		delete(c.flights, id)
	}
	if c.probe == cl {
		c.probe = nil
	}
	switch {
	case err != nil:
		class = c.classify(err)
		c.noteErrorLocked(class, err, now)
		tok = Token{}
		if class == Permanent {
			// The IdP's verdict holds whoever asked, a Get's miss as much as a refresh: what was cached for k must not be
			// served any longer, and its watchers must hear of it now rather than at the next refresh.
			c.dropFailedLocked(id, "the identity provider refused to issue this token")
		}
	case c.purgedSinceLocked(cl.startEpoch, k, id, tok.GrantID):
		err, tok = ErrPurged, Token{}
		c.noteSuccessLocked()
	default:
		tok = normalize(tok, now)
		if usable(&tok, now, storeMin) {
			c.storeLocked(k, id, tok, now, fromGet)
			stored = true
		}
		c.noteSuccessLocked()
	}
	cl.tok, cl.err, cl.class, cl.doneEpoch = tok, err, class, c.epoch
	c.mu.Unlock()
	if err != nil && !errors.Is(err, ErrPurged) {
		c.log.Warn("token fetch failed", append(keyAttrs(k), "class", class.String())...)
	}
	// The owner's wider purge (every token of the user or agent) runs before any waiter is released, so a caller told
	// "sign in again" can never be served a sibling token of the condemned sign-in afterwards.
	if class == Permanent && c.onPermanent != nil {
		c.onPermanent(k, err)
	}
	if stored && c.onStored != nil {
		c.onStored(k, tok)
	}
	close(cl.done)
}

// safeFetch keeps a panicking fetcher from taking the daemon down with every waiter still blocked on it.
func (c *Cache) safeFetch(ctx context.Context, k Key) (tok Token, err error) {
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("token fetcher panicked", append(keyAttrs(k), "panic", fmt.Sprint(r))...)
			tok, err = Token{}, errors.New("cache: token fetcher panicked")
		}
	}()
	return c.fetch(ctx, k)
}

// normalize strips monotonic readings and fills IssuedAt and RefreshAt when the fetcher left them out or they make no
// sense (a refresh time outside the token's lifetime).
func normalize(t Token, now time.Time) Token {
	t.ExpiresAt = t.ExpiresAt.Round(0)
	t.IssuedAt = t.IssuedAt.Round(0)
	t.RefreshAt = t.RefreshAt.Round(0)
	t.Fingerprint = Fingerprint(t.AccessToken)
	if t.IssuedAt.IsZero() || t.IssuedAt.After(t.ExpiresAt) {
		t.IssuedAt = now
	}
	if t.RefreshAt.IsZero() || t.RefreshAt.Before(t.IssuedAt) || !t.RefreshAt.Before(t.ExpiresAt) {
		t.RefreshAt = t.IssuedAt.Add(t.ExpiresAt.Sub(t.IssuedAt) * 3 / 4)
	}
	return t
}

// Put stores t for k as it is, e.g. when restoring from the encrypted store at start. An expired token is ignored. A
// restored token is not marked used: it is refreshed ahead only once someone uses or watches it.
func (c *Cache) Put(k Key, t Token) {
	if t.AccessToken == "" || t.ExpiresAt.IsZero() {
		return
	}
	now := c.wallNow()
	t = normalize(t, now)
	if !usable(&t, now, 0) {
		return
	}
	c.mu.Lock()
	c.storeLocked(k, k.ID(), t, now, false)
	c.mu.Unlock()
}

// storeLocked installs tok as the current token for id, indexes it, schedules it and tells the watchers.
func (c *Cache) storeLocked(k Key, id string, tok Token, now time.Time, used bool) {
	e := c.entries[id]
	if e == nil {
		e = &entry{id: id, key: k, heapIdx: -1}
		c.entries[id] = e
		addIndex(c.byUser, k.UserOID, e)
		addIndex(c.byAgent, k.AgentAppID, e)
		for c.maxPerAgent > 0 && len(c.byAgent[k.AgentAppID]) > c.maxPerAgent {
			if !c.evictLocked(k.AgentAppID, e) {
				break
			}
		}
	} else if e.tok.GrantID != tok.GrantID {
		delIndex(c.byGrant, e.tok.GrantID, e)
	}
	if tok.GrantID != "" {
		addIndex(c.byGrant, tok.GrantID, e)
	}
	e.tok = tok
	e.gen++
	e.failures = 0
	e.interaction = false
	if used {
		e.lastUsed.Store(now.UnixNano())
	}
	c.scheduleLocked(e, c.refreshDue(&e.tok, now))
	c.notifyLocked(id, Event{Token: &tok})
}

// SetLimits changes RefreshWindow and MaxPerAgent (config reload); zero means the default, as in Options. An agent
// above a lowered cap is brought down to it when it next stores a token.
func (c *Cache) SetLimits(refreshWindow time.Duration, maxPerAgent int) {
	if refreshWindow <= 0 {
		refreshWindow = defaultRefreshWindow
	}
	if maxPerAgent == 0 {
		maxPerAgent = defaultMaxPerAgent
	}
	c.mu.Lock()
	c.window, c.maxPerAgent = refreshWindow, maxPerAgent
	c.mu.Unlock()
}

// evictLocked removes the agent's least recently used token other than keep, skipping tokens someone watches or a
// refresh is fetching (their owners are busy with them). Never-used tokens (restored at start) go first, then the
// oldest use, then the soonest expiry. If every candidate is skipped (it reports false) the agent stays over its cap
// until one frees up.
func (c *Cache) evictLocked(agentAppID string, keep *entry) bool {
	var victim *entry
	for _, e := range c.byAgent[agentAppID] {
		if e == keep || e.heapIdx < 0 {
			continue
		}
		if g := c.subs[e.id]; g != nil && len(g.subs) > 0 {
			continue
		}
		if victim == nil || lessRecentlyUsed(e, victim) {
			victim = e
		}
	}
	if victim == nil {
		return false
	}
	c.removeLocked(victim, Event{Reason: "evicted"})
	if c.onDropped != nil {
		c.dropped = append(c.dropped, victim.key)
		c.signal()
	}
	return true
}

func lessRecentlyUsed(a, b *entry) bool {
	if ua, ub := a.lastUsed.Load(), b.lastUsed.Load(); ua != ub {
		return ua < ub
	}
	return a.tok.ExpiresAt.Before(b.tok.ExpiresAt)
}

// refreshDue picks the jittered refresh time: RefreshAt ± Jitter × (time until RefreshAt), never in the second half of
// what is left after RefreshAt (so jitter cannot push a refresh past expiry) and never sooner than Backoff.Min from now.
func (c *Cache) refreshDue(t *Token, now time.Time) time.Time {
	due := t.RefreshAt
	if d := t.RefreshAt.Sub(now); d > 0 && c.jitter > 0 {
		due = due.Add(time.Duration((rand.Float64()*2 - 1) * c.jitter * float64(d)))
	}
	if latest := t.RefreshAt.Add(t.ExpiresAt.Sub(t.RefreshAt) / 2); due.After(latest) {
		due = latest
	}
	// A token that is already due (a short lifetime, or restored late) waits at least Backoff.Min, so a token that
	// arrives due cannot make the scheduler refresh it in a tight loop.
	if earliest := now.Add(c.backoff.Min); due.Before(earliest) {
		due = earliest
	}
	return due
}

func (c *Cache) noteSuccessLocked() {
	c.online = true
	c.failures = 0
	c.retryAt = time.Time{}
	// A Retry-After belongs to the outage that sent it; a later one starts from our own backoff.
	c.throttledUntil = time.Time{}
}

// noteErrorLocked records a failed fetch. A transient failure lengthens the backoff once per window, however many
// requests failed within it: counting each one would let a burst of misses push the retry time out to the cap.
func (c *Cache) noteErrorLocked(class Class, err error, now time.Time) {
	c.lastErrClass = class.String()
	c.lastErr = now
	if class != Transient {
		if !c.online && c.answered != nil && c.answered(err) {
			c.noteSuccessLocked() // reached: it refused or challenged, but it is not down
		}
		return
	}
	c.online = false
	c.lastTransient, c.lastTransientErr = now, err
	var after time.Duration
	if c.retryAfter != nil {
		after = c.retryAfter(err)
	}
	if until := now.Add(after); after > 0 && until.After(c.throttledUntil) {
		c.throttledUntil = until
	}
	if c.retryAt.IsZero() || !now.Before(c.retryAt) {
		c.retryAt = now.Add(max(c.backoff.Delay(c.failures), after))
		c.failures++
	} else if at := now.Add(after); at.After(c.retryAt) {
		c.retryAt = at // the IdP asked for longer within the window
	}
}

// offlineLocked returns the answer for a miss that must not start an exchange now, or nil. Offline, misses wait for the
// retry time, but never more than missGate after the latest transient failure unless the IdP asked for longer, and
// only one goes out at a time: the first miss after that is the probe, and its success puts the cache back online. The
// delay a gated miss is given is the time until the next probe may go.
func (c *Cache) offlineLocked(now time.Time) *OfflineError {
	if c.online {
		return nil
	}
	if c.probe == nil && !now.Before(c.missGateOpensLocked()) {
		return nil
	}
	return &OfflineError{RetryIn: c.missRetryInLocked(now), Err: c.lastTransientErr}
}

// missGateOpensLocked is when, offline, the next miss may go to the IdP.
func (c *Cache) missGateOpensLocked() time.Time {
	open := c.lastTransient.Add(missGate)
	if c.retryAt.Before(open) {
		open = c.retryAt
	}
	if c.throttledUntil.After(open) {
		open = c.throttledUntil
	}
	return open
}

func (c *Cache) missRetryInLocked(now time.Time) time.Duration {
	if retry := c.missGateOpensLocked().Sub(now); retry > 0 {
		return retry
	}
	return time.Second // only the probe is holding misses back
}

// MissRetryIn is the delay to give a miss that failed while offline: until the next miss may go to the IdP. Zero
// while online.
func (c *Cache) MissRetryIn() time.Duration {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.online {
		return 0
	}
	return c.missRetryInLocked(c.wallNow())
}

func addIndex(ix map[string]map[string]*entry, v string, e *entry) {
	m := ix[v]
	if m == nil {
		m = make(map[string]*entry)
		ix[v] = m
	}
	m[e.id] = e
}

func delIndex(ix map[string]map[string]*entry, v string, e *entry) {
	if m := ix[v]; m != nil {
		delete(m, e.id)
		if len(m) == 0 {
			delete(ix, v)
		}
	}
}

// Snapshot returns every entry still valid now, for persisting.
func (c *Cache) Snapshot() []Entry {
	now := c.wallNow()
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]Entry, 0, len(c.entries))
	for _, e := range c.entries {
		if usable(&e.tok, now, 0) {
			out = append(out, Entry{Key: e.key, Token: e.tok})
		}
	}
	return out
}

// Stats is a point-in-time summary for the status command.
type Stats struct {
	Entries        int
	NextRefresh    time.Time // the scheduler's next action (a refresh, a retry, or dropping an expired token)
	Online         bool
	LastErrorClass string
	LastError      time.Time
	RetryAt        time.Time
}

func (c *Cache) Stats() Stats {
	c.mu.RLock()
	defer c.mu.RUnlock()
	s := Stats{Entries: len(c.entries), Online: c.online, LastErrorClass: c.lastErrClass, LastError: c.lastErr, RetryAt: c.retryAt}
	if len(c.heap) > 0 {
		s.NextRefresh = c.heap[0].due
	}
	return s
}

// Online reports whether the IdP answered the latest fetch, and, when it did not, when the cache will next try.
func (c *Cache) Online() (bool, time.Time) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.online, c.retryAt
}

// keyAttrs names a key in logs by ids only; the claims challenge is represented by its hash already.
func keyAttrs(k Key) []any {
	return []any{"user_oid", k.UserOID, "agent", k.AgentAppID, "mode", k.Mode, "resource", k.Resource}
}
