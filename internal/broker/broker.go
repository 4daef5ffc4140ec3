// Package broker is the request path of DESIGN.md §2: validate → attest → rate limit → sign-in → consent → cache → IdP.
// It maps every failure to a gRPC status with a stable ErrorInfo reason here, at the edge, and nowhere else.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentidd/agentidd/internal/attest"
	"github.com/agentidd/agentidd/internal/audit"
	"github.com/agentidd/agentidd/internal/cache"
	"github.com/agentidd/agentidd/internal/config"
	"github.com/agentidd/agentidd/internal/consent"
	"github.com/agentidd/agentidd/internal/entra"
	"github.com/agentidd/agentidd/ipc"
	"github.com/agentidd/agentidd/platform"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// IdP is what the broker needs of internal/entra.
type IdP interface {
	Account() *entra.Account
	OnBehalfOf(ctx context.Context, agentAppID string, scopes []string, claims string) (entra.Result, error)
	AppOnly(ctx context.Context, agentAppID string, scopes []string, claims string) (entra.Result, error)
}

// Auditor appends one record per decision.
type Auditor interface {
	Append(r audit.Record) (string, error)
}

// Options wires the broker.
type Options struct {
	Config    *config.Config
	IdP       IdP
	Cache     *cache.Cache
	Consent   *consent.Manager
	Audit     Auditor
	Attestor  *attest.Attestor
	Inspector platform.ProcessInspector
	Now       func() time.Time
	Log       *slog.Logger
}

// Broker serves the AgentIdentity service.
type Broker struct {
	agentidv1.UnimplementedAgentIdentityServer

	cfg       atomic.Pointer[config.Config]
	policy    atomic.Pointer[config.Policy]
	idp       IdP
	cache     *cache.Cache
	consent   *consent.Manager
	audit     Auditor
	attestor  *attest.Attestor
	inspector platform.ProcessInspector
	now       func() time.Time
	log       *slog.Logger
	limits    atomic.Pointer[limiter]
	attested  *attestCache
	degraded  atomic.Pointer[string]
	// auditBroken says why the audit log stopped taking records; once set, no token is issued (see respond).
	auditBroken atomic.Pointer[string]
	launches    launchSet // `agentidd exec` trees (launch.go)

	// keyInfo remembers, per cache key, what a refresh needs that the key only hashes: the raw claims and the grant.
	keyInfo keyInfos
}

// keyInfos maps cache key IDs to their keyInfo. A plain map under a read lock rather than a sync.Map: a lookup by an ID
// built in a stack buffer then allocates nothing, and a cached GetToken does one per call.
type keyInfos struct {
	mu sync.RWMutex
	m  map[string]*keyInfo
}

func (s *keyInfos) lookup(id []byte) *keyInfo {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.m[string(id)]
}

func (s *keyInfos) load(id string) (*keyInfo, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ki, ok := s.m[id]
	return ki, ok
}

func (s *keyInfos) store(id string, ki *keyInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]*keyInfo)
	}
	s.m[id] = ki
}

// deleteIf removes every entry doomed says so of, and returns how many. doomed runs under the write lock, so it must
// not call back into keyInfos.
func (s *keyInfos) deleteIf(doomed func(*keyInfo) bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for id, ki := range s.m {
		if doomed(ki) {
			delete(s.m, id)
			n++
		}
	}
	return n
}

type keyInfo struct {
	key      cache.Key
	claims   string
	grantID  string
	lastSeen atomic.Int64 // unix nanoseconds of the last request for this key; see SweepKeyInfo
}

// keyInfoIdle is how long bookkeeping for a key that is no longer cached is kept. It must exceed the time from
// authorization to fetch (bounded by the cache's fetch timeout), or a request could lose its bookkeeping mid-flight.
const keyInfoIdle = 5 * time.Minute

// seenEvery limits how often a request rewrites its key's lastSeen: parallel requests for one hot key would otherwise all
// write the same cache line, and the sweep only needs minutes of precision.
const seenEvery = int64(time.Second)

func newKeyInfo(k cache.Key, claims, grantID string, now time.Time) *keyInfo {
	ki := &keyInfo{key: k, claims: claims, grantID: grantID}
	ki.lastSeen.Store(now.UnixNano())
	return ki
}

func (ki *keyInfo) seen(now time.Time) {
	if n := now.UnixNano(); n-ki.lastSeen.Load() >= seenEvery {
		ki.lastSeen.Store(n)
	}
}

// SweepKeyInfo drops refresh bookkeeping of keys that left the cache (expired unused, purged) and have not been asked
// for since keyInfoIdle; without it every distinct claims challenge ever seen would stay in memory.
func (b *Broker) SweepKeyInfo() int {
	cutoff := b.now().Add(-keyInfoIdle).UnixNano()
	return b.keyInfo.deleteIf(func(ki *keyInfo) bool {
		if ki.lastSeen.Load() >= cutoff {
			return false
		}
		_, cached := b.cache.Peek(ki.key)
		return !cached
	})
}

// New builds a broker.
func New(o Options) *Broker {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	b := &Broker{idp: o.IdP, cache: o.Cache, consent: o.Consent, audit: o.Audit, attestor: o.Attestor,
		inspector: o.Inspector, now: o.Now, log: o.Log, attested: newAttestCache(o.Now)}
	b.SetConfig(o.Config)
	return b
}

// AgentConfigured reports whether the local agent (name and agent identity) is in the configuration in force and not
// excluded by the managed policy in force: whether a consent request may be opened for it (consent.Options.Configured).
func (b *Broker) AgentConfigured(name, agentAppID string) bool {
	a, ok := b.cfg.Load().Agent(name)
	if !ok || a.AppID != agentAppID {
		return false
	}
	excluded, _ := b.policy.Load().ExcludesAgent(agentAppID)
	return !excluded
}

// SetConfig swaps the configuration (live reload). Agents removed from it are purged by the daemon, not here.
// The rate limiter is rebuilt only when its settings change: a reload that touches something else must not refill
// every agent's bucket.
func (b *Broker) SetConfig(c *config.Config) {
	b.cfg.Store(c)
	if l := b.limits.Load(); l == nil || l.r != rate.Limit(c.RateLimit) || l.burst != c.Burst {
		b.limits.Store(newLimiter(c.RateLimit, c.Burst))
	}
	b.attested.reset()
}

// SetPolicy swaps the managed policy (live reload); nil is the empty policy.
func (b *Broker) SetPolicy(p *config.Policy) { b.policy.Store(p) }

// SetDegraded records why the daemon cannot mint tokens (e.g. a locked secret store); "" clears it.
func (b *Broker) SetDegraded(why string) {
	if why == "" {
		b.degraded.Store(nil)
		return
	}
	b.degraded.Store(&why)
}

// Degraded returns the current degradation, or "": the audit log's failure first, since only a restart ends it.
func (b *Broker) Degraded() string {
	if p := b.auditBroken.Load(); p != nil {
		return *p
	}
	if p := b.degraded.Load(); p != nil {
		return *p
	}
	return ""
}

// SetAuditFailed stops token issue for good (until a restart): the audit log can no longer record decisions. The first
// reason given stays.
func (b *Broker) SetAuditFailed(why string) {
	b.auditBroken.CompareAndSwap(nil, &why)
}

// call is one authorized request.
type call struct {
	req   request
	agent config.Agent
	peer  *ipc.PeerInfo
	proc  platform.Process
	via   attest.Result
	user  *entra.Account
	grant consent.Grant
	key   cache.Key
	// attestGen is the attestation cache's generation when authorize attested the caller: while it is unchanged, no
	// reload or ended launch has happened since.
	attestGen uint64
	wantAppID string
}

// GetToken implements AgentIdentity.GetToken.
func (b *Broker) GetToken(ctx context.Context, in *agentidv1.GetTokenRequest) (*agentidv1.GetTokenResponse, error) {
	peer, _ := ipc.PeerFromContext(ctx)
	return b.getToken(ctx, peer, in, "")
}

// getToken serves a request for peer: the connection's own peer, or a process in an `agentidd exec` tree (LaunchToken).
// wantAppID, when set, is the agent app id the caller insists on (an SDK's client_id).
func (b *Broker) getToken(ctx context.Context, peer *ipc.PeerInfo, in *agentidv1.GetTokenRequest, wantAppID string) (*agentidv1.GetTokenResponse, error) {
	c := &call{wantAppID: wantAppID}
	err := b.authorize(ctx, peer, in, c)
	if err != nil {
		b.auditDenied(c, err)
		return nil, err
	}
	tok, src, err := b.cache.Get(ctx, c.key, c.req.minTTL, c.req.forceRefresh || c.req.claims != "")
	if err != nil {
		mapped := b.fetchError(ctx, err)
		b.auditDenied(c, mapped)
		return nil, mapped
	}
	// The peer may have exited (and its PID been reused), or stopped being the agent, while we waited on consent or the
	// IdP.
	// A cache hit with nothing reset since authorize was attested a moment ago: only liveness can have changed.
	if err := b.stillAttested(c, src != cache.SourceCache || b.attested.generation() != c.attestGen); err != nil {
		b.auditDenied(c, err)
		return nil, err
	}
	return b.respond(c, tok, src)
}

// stillAttested checks, before a token leaves, that the caller is alive and (with reattest) still attests as its agent
// under the current config: a binding edited, an agent removed, an `agentidd exec` launch ended or the program
// exec'd since the call (or the watch) began must stop it.
func (b *Broker) stillAttested(c *call, reattest bool) error {
	if err := c.peer.Alive(); err != nil {
		return rpcError(codes.PermissionDenied, ReasonPeerGone, "the calling process exited before the token was ready", 0, nil)
	}
	if !reattest {
		return nil
	}
	agent, ok := b.cfg.Load().Agent(c.agent.Name)
	if !ok || agent.AppID != c.agent.AppID {
		return rpcError(codes.NotFound, ReasonUnknownAgent, "agent "+c.agent.Name+" is no longer in the agentidd config", 0, nil)
	}
	_, _, err := b.attest(c.peer, agent)
	return err
}

// respond records the token's issue and builds the answer. A token the audit log cannot record does not leave: every
// issue must be attributable to both principals afterwards, and a full disk must not become a way to act unrecorded.
func (b *Broker) respond(c *call, tok cache.Token, src cache.Source) (*agentidv1.GetTokenResponse, error) {
	source := agentidv1.TokenSource_TOKEN_SOURCE_IDP
	if src == cache.SourceCache {
		source = agentidv1.TokenSource_TOKEN_SOURCE_CACHE
	}
	auditID, err := b.audit.Append(b.recordIssued(c, src, &tok))
	if err != nil {
		why := "the audit log cannot be written (" + err.Error() + "); no token is issued unrecorded: free space in the state directory and restart agentidd"
		b.SetAuditFailed(why)
		b.log.Error("a token was withheld: the audit log cannot be written", "agent", c.agent.Name, "err", err)
		return nil, rpcError(codes.FailedPrecondition, ReasonAuditUnavailable, why, 0, nil)
	}
	mode := agentidv1.Mode_MODE_OBO
	if c.req.mode == "app" {
		mode = agentidv1.Mode_MODE_APP
	}
	chain := append([]string(nil), c.grant.Chain...)
	chain = append(chain, c.agent.Name)
	return &agentidv1.GetTokenResponse{
		AccessToken: tok.AccessToken,
		TokenType:   "Bearer",
		ExpiresAt:   timestamppb.New(tok.ExpiresAt),
		Scopes:      tok.Scopes,
		Principal: &agentidv1.Principal{UserOid: c.user.OID, UserUpn: c.user.UPN, AgentAppId: c.agent.AppID, AgentName: c.agent.Name,
			ActorChain: chain, BlueprintAppId: b.cfg.Load().BlueprintAppID},
		GrantId: c.grant.ID,
		Source:  source,
		AuditId: auditID,
		Mode:    mode,
	}, nil
}

// authorize runs every check before the cache. On error the returned call holds what was learned, for the audit record.
// c is filled in by the caller's frame rather than allocated here: the fast path should not pay for a heap call record.
func (b *Broker) authorize(ctx context.Context, peer *ipc.PeerInfo, in *agentidv1.GetTokenRequest, c *call) error {
	cfg := b.cfg.Load()
	if peer == nil {
		return rpcError(codes.PermissionDenied, ReasonNotAttested, "no peer credentials on this connection", 0, nil)
	}
	c.peer = peer
	req, err := parseRequest(in, cfg.MinTTL.Duration, cfg.ConsentWaitMax.Duration)
	c.req = req
	if err != nil {
		return err
	}
	agent, ok := cfg.Agent(req.agent)
	if !ok {
		return rpcError(codes.NotFound, ReasonUnknownAgent, "no agent named "+req.agent+" in the agentidd config", 0, nil)
	}
	c.agent = agent
	// Checked before attestation, consent and the exchange: a client_id for another identity must not mint a token,
	// prompt the user, or leave an "issued" record.
	if c.wantAppID != "" && !strings.EqualFold(c.wantAppID, agent.AppID) {
		return rpcError(codes.InvalidArgument, ReasonInvalidArgument, "client_id "+c.wantAppID+" is not the identity of agent "+agent.Name, 0, nil)
	}
	if ok, why := b.policy.Load().Allows(agent.AppID, req.mode, req.resource); !ok {
		return rpcError(codes.PermissionDenied, ReasonPolicy, why, 0, nil)
	}
	c.attestGen = b.attested.generation()
	proc, via, err := b.attest(peer, agent)
	c.proc, c.via = proc, via
	if err != nil {
		return err
	}
	if ok, retry := b.limits.Load().allow(agent.Name); !ok {
		return rpcError(codes.ResourceExhausted, ReasonRateLimited, "too many token requests from agent "+agent.Name, retry, nil)
	}
	if p := b.auditBroken.Load(); p != nil {
		return rpcError(codes.FailedPrecondition, ReasonAuditUnavailable, *p, 0, nil)
	}
	if p := b.degraded.Load(); p != nil {
		return rpcError(codes.FailedPrecondition, ReasonSecretStore, *p, 0, nil)
	}
	c.user = b.idp.Account()
	if c.user == nil {
		return rpcError(codes.Unauthenticated, ReasonSigninRequired, "no user is signed in to agentidd: run `agentidd login`", 0, nil)
	}
	grant, err := b.consent.Check(ctx, b.consentRequest(c), req.consentWait)
	if err != nil {
		if errors.Is(err, consent.ErrNotConfigured) {
			// The config or the policy changed under this call; say which.
			if ok, why := b.policy.Load().Allows(agent.AppID, req.mode, req.resource); !ok {
				return rpcError(codes.PermissionDenied, ReasonPolicy, why, 0, nil)
			}
		}
		return consentError(err)
	}
	c.grant = grant
	c.key = cache.NewKey(c.user.OID, agent.AppID, req.mode, req.resource, req.scopes, req.claims)
	c.key.AgentName = agent.Name
	var idBuf [256]byte
	if ki := b.keyInfo.lookup(c.key.AppendID(idBuf[:0])); ki != nil && ki.grantID == grant.ID {
		ki.seen(b.now())
		c.key = ki.key // the same key with its ID already built: the cache lookup does not build it again
	} else {
		c.key = c.key.WithID()
		b.keyInfo.store(c.key.ID(), newKeyInfo(c.key, req.claims, grant.ID, b.now()))
	}
	return nil
}

func (b *Broker) consentRequest(c *call) consent.Request {
	chain := []string(nil)
	if c.req.parentAgent != "" {
		chain = []string{c.req.parentAgent}
	}
	return consent.Request{
		UserOID: c.user.OID, UserUPN: c.user.UPN,
		AgentName: c.agent.Name, AgentAppID: c.agent.AppID, AgentDisplayName: c.agent.DisplayName,
		Mode: c.req.mode, Resource: c.req.resource, Scopes: c.req.scopes, TaskID: c.req.taskID,
		Justification: c.req.justification, Chain: chain, ParentGrantID: c.req.parentGrantID,
		Process: consent.Process{PID: c.proc.PID, PPID: c.proc.PPID, User: peerUser(c.peer), ExePath: c.proc.ExePath, SHA256Prefix: prefix(c.via.SHA256), StartTime: c.proc.StartTime},
	}
}

func consentError(err error) error {
	var pending *consent.PendingError
	var denied *consent.DeniedError
	switch {
	case errors.Is(err, consent.ErrParentGrant):
		return rpcError(codes.PermissionDenied, ReasonConsentDenied, "delegation refused: "+err.Error(), 0, nil)
	case errors.Is(err, consent.ErrTooManyPending):
		// Before the denial case: the user was never asked, so "denied" would mislead.
		return rpcError(codes.ResourceExhausted, ReasonRateLimited,
			"this agent already has too many consent requests waiting for the user; retry after they are answered", 30*time.Second, nil)
	case errors.Is(err, consent.ErrNotConfigured):
		return rpcError(codes.NotFound, ReasonUnknownAgent, "this agent was removed from the agentidd config", 0, nil)
	case errors.As(err, &pending):
		return rpcError(codes.FailedPrecondition, ReasonConsentPending,
			"waiting for the user to approve this agent: run `agentidd consent watch` or answer the prompt",
			2*time.Second, map[string]string{"request_id": pending.RequestID})
	case errors.As(err, &denied):
		// Its own words: a prompt nobody answered or that was dismissed is no denial, and the next request asks again.
		return rpcError(codes.PermissionDenied, ReasonConsentDenied, denied.Error(), 0, nil)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return rpcError(codes.DeadlineExceeded, ReasonConsentPending, "gave up waiting for the user's consent decision", 0, nil)
	}
	return rpcError(codes.Internal, ReasonInternal, "consent check failed", 0, nil)
}

// ErrGrantGone: the grant that authorized a fetch was revoked before the token was ready.
var ErrGrantGone = errors.New("the grant covering this token was revoked")

// fetchError maps a cache/IdP failure; a transient one carries the cache's retry time.
func (b *Broker) fetchError(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, ErrGrantGone), errors.Is(err, cache.ErrPurged):
		return rpcError(codes.Aborted, ReasonGrantRevoked, "the grant was revoked while the token was being fetched; ask again (the user may be prompted)", 0, nil)
	case errors.Is(err, cache.ErrTooShort):
		return rpcError(codes.OutOfRange, ReasonMinTTLUnsatisfiable, "the identity provider issues tokens shorter than the requested min_ttl", 0, nil)
	}
	if ctx.Err() != nil {
		return rpcError(codes.DeadlineExceeded, ReasonIdPUnreachable, "the caller's deadline passed before the identity provider answered", 0, nil)
	}
	var off *cache.OfflineError
	if errors.As(err, &off) {
		// Not logged: the failure that made the daemon offline was, and an agent retrying must not flood the log.
		return rpcError(codes.Unavailable, ReasonIdPUnreachable,
			"the identity provider could not be reached moments ago and is not asked again before the retry delay; no valid cached token exists: retry later",
			off.RetryIn, nil)
	}
	// Offline, the time until the next miss may reach the IdP: the backoff's own retry time can be minutes away while a
	// miss probes within 30 s.
	retry := b.cache.MissRetryIn()
	if errors.Is(err, cache.ErrNoAnswerYet) {
		// The exchange is still running and its token will be cached: a short retry hint, unless already offline.
		return rpcError(codes.Unavailable, ReasonIdPUnreachable,
			"the identity provider has not answered within the caller's deadline; the exchange continues and its token will be cached: retry shortly",
			max(retry, time.Second), nil)
	}
	b.log.Warn("token exchange failed", "class", entra.Classify(err).Class.String(), "err", entra.Classify(err).Error())
	return idpError(err, retry)
}

// Fetch is the cache's Fetcher: one IdP exchange for a key.
func (b *Broker) Fetch(ctx context.Context, k cache.Key) (cache.Token, error) {
	info, ok := b.keyInfo.load(k.ID())
	if !ok {
		// A key with no live grant (revoked while this fetch was queued, or restored after the grant went away): refuse
		// rather than mint.
		return cache.Token{}, ErrGrantGone
	}
	if ok, why := b.policy.Load().Allows(k.AgentAppID, k.Mode, k.Resource); !ok {
		// The managed policy narrowed since this key was first served: mint nothing more for it, and let the key go.
		return cache.Token{}, fmt.Errorf("%w: %s", ErrGrantGone, why)
	}
	if !b.grantLive(info.grantID) {
		// Revoked or expired after the key's bookkeeping was written (a revocation can land between a GetToken's
		// consent check and that write, and then no purge would ever match what this fetch stores).
		return cache.Token{}, ErrGrantGone
	}
	var res entra.Result
	var err error
	if k.Mode == "app" {
		res, err = b.idp.AppOnly(ctx, k.AgentAppID, k.Scopes, info.claims)
	} else {
		res, err = b.idp.OnBehalfOf(ctx, k.AgentAppID, k.Scopes, info.claims)
	}
	if err != nil {
		return cache.Token{}, err
	}
	now := b.now().Round(0)
	scopes := res.Scopes
	if len(scopes) == 0 || sameScopeSet(scopes, k.Scopes) {
		// The key's slice, not MSAL's copy: with thousands of cached tokens one slice per token adds up (~200 B each).
		scopes = k.Scopes
	}
	// MSAL states expiry (receive time + expires_in) and refresh_in on the real clock; the cache plans on the broker's,
	// which is the same clock except in tests that move it: carry over the time left, not the instant.
	real := time.Now()
	onOurClock := func(t time.Time) time.Time {
		if t.IsZero() {
			return t
		}
		return now.Add(t.Sub(real))
	}
	return cache.Token{AccessToken: res.AccessToken, ExpiresAt: onOurClock(res.ExpiresAt), RefreshAt: onOurClock(res.RefreshAt),
		IssuedAt: now, Scopes: scopes, GrantID: info.grantID}, nil
}

// sameScopeSet reports whether a and b hold the same scopes, in any order (the key's are sorted, the IdP's need not be).
func sameScopeSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, s := range a {
		if !slices.Contains(b, s) {
			return false
		}
	}
	for _, s := range b {
		if !slices.Contains(a, s) {
			return false
		}
	}
	return true
}

func (b *Broker) grantLive(id string) bool {
	for _, g := range b.consent.Grants() {
		if g.ID == id {
			return true
		}
	}
	return false
}

// ForgetGrant drops refresh bookkeeping for keys derived from a revoked grant.
func (b *Broker) ForgetGrant(grantID string) {
	b.keyInfo.deleteIf(func(ki *keyInfo) bool { return ki.grantID == grantID })
}

// WatchToken implements AgentIdentity.WatchToken.
func (b *Broker) WatchToken(in *agentidv1.GetTokenRequest, stream agentidv1.AgentIdentity_WatchTokenServer) error {
	ctx := stream.Context()
	peer, _ := ipc.PeerFromContext(ctx)
	c := &call{}
	err := b.authorize(ctx, peer, in, c)
	if err != nil {
		b.auditDenied(c, err)
		return err
	}
	// Subscribed before the first token is got, and bound to the grant that authorized the stream: a purge after this
	// point reaches the stream even if it lands before the first token is sent, and so does the end of this grant when
	// the cached token was minted under another grant covering the same key (two tasks' grants, say).
	sub := b.cache.WatchGrant(c.key, c.grant.ID)
	defer sub.Finish()
	// Every refusal after authorize is a decision like the ones authorize makes, and is recorded as they are.
	deny := func(err error) error {
		b.auditDenied(c, err)
		return err
	}
	if !b.grantLive(c.grant.ID) { // revoked between authorize and the subscription: that purge reached nobody
		return deny(b.fetchError(ctx, ErrGrantGone))
	}
	tok, src, err := b.cache.Get(ctx, c.key, c.req.minTTL, c.req.forceRefresh)
	if err != nil {
		return deny(b.fetchError(ctx, err))
	}
	revoked := func(ev cache.Event) error {
		_ = stream.Send(&agentidv1.TokenEvent{Event: &agentidv1.TokenEvent_Revoked{Revoked: &agentidv1.Revocation{Reason: ev.Reason, At: timestamppb.New(b.now())}}})
		return nil
	}
	var sent string
	// src is where a token sent on this stream came from: the first from the Get, every later one a refresh, fresh
	// from the IdP.
	send := func(t *cache.Token, src cache.Source) error {
		if t.AccessToken == sent {
			return nil // the first token again, or an interaction notice about it: nothing new to hand out
		}
		if !b.grantLive(c.grant.ID) {
			return deny(b.fetchError(ctx, ErrGrantGone))
		}
		if err := b.stillAttested(c, true); err != nil {
			return deny(err)
		}
		resp, err := b.respond(c, *t, src)
		if err != nil {
			return err
		}
		if err := stream.Send(&agentidv1.TokenEvent{Event: &agentidv1.TokenEvent_Token{Token: resp}}); err != nil {
			return err
		}
		sent = t.AccessToken
		return nil
	}
	// Whatever arrived since the subscription is at least as new as tok.
	first := &tok
	select {
	case ev, ok := <-sub.Updates():
		if !ok {
			return nil
		}
		// An expiry already read here concerns tok only if tok itself has run out: an older token's expiry was followed
		// by tok's arrival, whose event would have replaced it.
		if ev.Revoked || (ev.Expired && !tok.ExpiresAt.After(b.now())) {
			return revoked(ev)
		}
		if ev.Token != nil {
			first, src = ev.Token, cache.SourceIDP
		}
	default:
	}
	if err := send(first, src); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-sub.Updates():
			if !ok {
				return nil
			}
			// An expiry without a replacement ends the stream as a revocation does: the agent holds a token that no
			// longer works, and asking again either fetches a new one or says why it cannot.
			if ev.Revoked || ev.Expired {
				return revoked(ev)
			}
			if ev.Token == nil {
				continue
			}
			if err := send(ev.Token, cache.SourceIDP); err != nil {
				return err
			}
		}
	}
}

// EndTask implements AgentIdentity.EndTask: grants bound to the task are revoked (and their tokens purged) before it returns.
func (b *Broker) EndTask(ctx context.Context, in *agentidv1.EndTaskRequest) (*agentidv1.EndTaskResponse, error) {
	if in.GetTaskId() == "" || len(in.GetTaskId()) > maxFieldLen || !printable(in.GetTaskId()) {
		return nil, badRequest("task_id is required")
	}
	peer, ok := ipc.PeerFromContext(ctx)
	if !ok {
		return nil, rpcError(codes.PermissionDenied, ReasonNotAttested, "no peer credentials on this connection", 0, nil)
	}
	// A task's grants are its agent's to end: any other process of the user could otherwise revoke them (task ids
	// appear in the audit log) and cancel their open requests.
	agents := map[string]bool{}
	for _, a := range b.cfg.Load().Agents {
		if _, _, err := b.attest(peer, a); err == nil {
			agents[a.Name] = true
		}
	}
	if len(agents) == 0 {
		return nil, rpcError(codes.PermissionDenied, ReasonNotAttested, "the calling process is not attested as any configured agent", 0, nil)
	}
	out := &agentidv1.EndTaskResponse{}
	for _, g := range b.consent.EndTask(in.GetTaskId(), agents) {
		out.RevokedGrantIds = append(out.RevokedGrantIds, g.ID)
	}
	return out, nil
}

func (b *Broker) auditDenied(c *call, err error) {
	if c == nil {
		return
	}
	_, _ = b.audit.Append(b.record(c, audit.EventTokenDenied, audit.OutcomeDenied, ipc.ErrorInfo(err).GetReason(), nil))
}

// maxAuditedName bounds an agent name recorded for an unknown agent: the caller chose it.
const maxAuditedName = 128

// peerUser names the OS user of a peer for the audit log: the SID on Windows, the uid elsewhere.
func peerUser(p *ipc.PeerInfo) string {
	if p.SID != "" {
		return p.SID
	}
	return strconv.Itoa(p.UID)
}

func (b *Broker) record(c *call, event, outcome, reason string, tok *cache.Token) audit.Record {
	r := audit.Record{Event: event, Outcome: outcome, Reason: reason, Mode: c.req.mode, Resource: c.req.resource, Scopes: c.req.scopes,
		GrantID: c.grant.ID, Chain: c.grant.Chain, TaskID: c.req.taskID, RunID: c.req.runID}
	if c.user != nil {
		r.User = audit.User{OID: c.user.OID, UPN: c.user.UPN}
	}
	r.Agent = audit.Agent{AppID: c.agent.AppID, Name: c.agent.Name}
	if reason == ReasonUnknownAgent && len(c.req.agent) <= maxAuditedName {
		// The name passed parseRequest's checks (printable, bounded); the record says which one was asked for.
		r.Agent.Name = c.req.agent
	}
	if c.peer != nil {
		r.Peer = audit.Peer{PID: c.peer.PID, UID: peerUser(c.peer), Exe: c.proc.ExePath, SHA256: prefix(c.via.SHA256)}
	}
	r.LaunchID = c.via.Launch
	if tok != nil {
		r.Token = audit.TokenRef{SHA256: tok.Fingerprint, ExpiresAt: tok.ExpiresAt}
	}
	return r
}

func (b *Broker) recordIssued(c *call, src cache.Source, tok *cache.Token) audit.Record {
	r := b.record(c, audit.EventTokenIssued, audit.OutcomeOK, "", tok)
	r.Source = string(src)
	return r
}

func prefix(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// Remember records what a refresh of a restored key needs.
func (b *Broker) Remember(k cache.Key, grantID, claims string) {
	k = k.WithID()
	b.keyInfo.store(k.ID(), newKeyInfo(k, claims, grantID, b.now()))
}

// ClaimsFor returns the raw claims a key was minted for ("" for none).
func (b *Broker) ClaimsFor(k cache.Key) string {
	if ki, ok := b.keyInfo.load(k.ID()); ok {
		return ki.claims
	}
	return ""
}
