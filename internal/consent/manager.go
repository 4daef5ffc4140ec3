package consent

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/agentidd/agentidd/platform"
)

const (
	defaultDenyCooldown  = 10 * time.Minute
	defaultPromptTimeout = 2 * time.Minute
	expireEvery          = time.Second
	subscriberBuffer     = 16
	stateVersion         = 1

	// maxPendingPerAgent bounds the prompts one agent can have open at once. Identical requests join one
	// prompt, so only distinct questions count: a well-behaved agent asks a few at a time (one per resource, or
	// per task an orchestrator runs in parallel), and more than 8 unanswered questions from one program is
	// already more than a user can weigh. Without a cap, varying task ids or scopes, limited only by the
	// token rate limit, would bury the user in prompts until one is clicked Allow.
	maxPendingPerAgent = 8
)

// Manager holds grants, remembered denials and pending consent requests.
// It is safe for concurrent use. Check on a covered request takes only a
// read lock and does no I/O: it is on the token fast path.
type Manager struct {
	o   Options
	log *slog.Logger

	mu      sync.RWMutex
	grants  map[string]*Grant   // by grant ID
	denies  []deny              // remembered user denials, pruned lazily
	pending map[string]*pending // by key(request): joins identical requests
	byID    map[string]*pending // by request ID: for Decide
	gen     uint64              // bumped on every change worth persisting
	watches map[string]func()   // by grant ID: stops the task process watch

	subMu   sync.Mutex
	subs    map[int]chan Request
	nextSub int

	// persistMu serialises saves so an older snapshot never overwrites a
	// newer one. Lock order: persistMu before mu.
	persistMu sync.Mutex
	savedGen  uint64
}

// deny is a remembered "no". It blocks identical requests and requests for
// more scopes (a superset); a request for fewer scopes may ask again. It
// holds for every task: a task id is the agent's own label, and a fresh one
// must not reopen a question the user has just answered. AgentName is empty
// in denials saved before they recorded it; those block every local agent of
// the app id, the side that cannot prompt a user who just said no.
type deny struct {
	UserOID    string    `json:"user_oid"`
	AgentAppID string    `json:"agent_app_id"`
	AgentName  string    `json:"agent_name,omitempty"`
	Mode       string    `json:"mode"`
	Resource   string    `json:"resource"`
	Chain      []string  `json:"chain,omitempty"`
	Scopes     []string  `json:"scopes"`
	Until      time.Time `json:"until"`
	RequestID  string    `json:"request_id"`
}

func (d deny) blocks(r Request) bool {
	return d.UserOID == r.UserOID && d.AgentAppID == r.AgentAppID && (d.AgentName == "" || d.AgentName == r.AgentName) &&
		d.Mode == r.Mode && d.Resource == r.Resource && slices.Equal(d.Chain, r.Chain) && subset(d.Scopes, r.Scopes)
}

type pending struct {
	req    Request
	key    string
	cancel context.CancelFunc // stops the prompter once settled
	timer  *time.Timer
	done   chan struct{} // closed after grant/err are set
	grant  *Grant
	err    error
}

type persisted struct {
	Version int      `json:"version"`
	Grants  []*Grant `json:"grants"`
	Denies  []deny   `json:"denies"`
}

// NewManager applies defaults and loads persisted grants and denials,
// dropping those that ended while the daemon was down.
func NewManager(o Options) (*Manager, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.DenyCooldown <= 0 {
		o.DenyCooldown = defaultDenyCooldown
	}
	if o.PromptTimeout <= 0 {
		o.PromptTimeout = defaultPromptTimeout
	}
	if o.MaxGrant <= 0 || o.MaxGrant > SevenDays {
		o.MaxGrant = SevenDays
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	m := &Manager{
		o:       o,
		log:     o.Log.With("component", "consent"),
		grants:  make(map[string]*Grant),
		pending: make(map[string]*pending),
		byID:    make(map[string]*pending),
		watches: make(map[string]func()),
		subs:    make(map[int]chan Request),
	}
	if o.Persist == nil {
		return m, nil
	}
	data, err := o.Persist.LoadConsent()
	if err != nil {
		return nil, fmt.Errorf("consent: load state: %w", err)
	}
	if len(data) == 0 {
		return m, nil
	}
	var st persisted
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("consent: decode state: %w", err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("consent: state version %d, want %d", st.Version, stateVersion)
	}
	now := m.now()
	for _, g := range st.Grants {
		if g == nil || g.ID == "" || g.Expired(now) {
			continue
		}
		if g.AgentName == "" {
			// It cannot say which of the programs sharing its app id the user
			// approved, and covering all of them is what the name prevents.
			m.log.Warn("consent grant without a local agent name dropped; the agent will ask again",
				"grant_id", g.ID, "app_id", g.AgentAppID)
			m.gen++
			continue
		}
		m.grants[g.ID] = g
	}
	// A delegated grant whose parent ended while the daemon was down ends too.
	if orphans := m.orphansLocked(); len(orphans) > 0 {
		m.gen++
	}
	for _, d := range st.Denies {
		if now.Before(d.Until) {
			m.denies = append(m.denies, d)
		}
	}
	m.log.Info("consent state loaded", "grants", len(m.grants), "denies", len(m.denies))
	return m, nil
}

// now is wall-clock time without the monotonic reading (see Grant.Expired).
func (m *Manager) now() time.Time { return m.o.Now().Round(0) }

// Check returns a live grant covering req. If there is none it opens a
// consent request, or joins an identical open one, so the user is asked
// once however many callers wait, and waits up to wait for the answer:
//   - wait <= 0, or no answer within wait: *PendingError (the request stays open);
//   - the user allowed: the new grant;
//   - the user denied: *DeniedError{Remembered: true}; identical requests
//     (or ones asking for more scopes), for any task, fail at once until the
//     cool-down ends;
//   - a new question while the agent already has maxPendingPerAgent open:
//     *DeniedError wrapping ErrTooManyPending, with no prompt;
//   - nobody answered before PromptTimeout, the prompt was dismissed or the
//     task ended: *DeniedError{Remembered: false}; the next request asks again.
func (m *Manager) Check(ctx context.Context, req Request, wait time.Duration) (Grant, error) {
	if err := normalize(&req); err != nil {
		return Grant{}, err
	}
	now := m.now()
	m.mu.RLock()
	err := m.delegationLocked(&req, now)
	var g *Grant
	if err == nil {
		g = m.findLocked(req, now)
	}
	m.mu.RUnlock()
	if err != nil {
		return Grant{}, err
	}
	if g != nil {
		return *g, nil
	}

	m.mu.Lock()
	expired, orphaned := m.expireLocked(now)
	// The parent may have expired just now.
	if err := m.delegationLocked(&req, now); err != nil {
		m.mu.Unlock()
		m.revokedBoth(expired, orphaned)
		return Grant{}, err
	}
	if g := m.findLocked(req, now); g != nil {
		m.mu.Unlock()
		m.revokedBoth(expired, orphaned)
		return *g, nil
	}
	for _, d := range m.denies {
		if d.blocks(req) && now.Before(d.Until) {
			m.mu.Unlock()
			m.revokedBoth(expired, orphaned)
			return Grant{}, &DeniedError{RequestID: d.RequestID, Remembered: true, Until: d.Until, Reason: "denied by the user"}
		}
	}
	k := key(req)
	p, joined := m.pending[k]
	if !joined {
		if m.o.Configured != nil && !m.o.Configured(req.AgentName, req.AgentAppID) {
			m.mu.Unlock()
			m.revokedBoth(expired, orphaned)
			return Grant{}, &DeniedError{Err: ErrNotConfigured, Reason: fmt.Sprintf("agent %q is no longer in the agentidd config", req.AgentName)}
		}
		if n := m.openByAgentLocked(req); n >= maxPendingPerAgent {
			m.mu.Unlock()
			m.revokedBoth(expired, orphaned)
			m.log.Warn("consent request refused: too many open requests from this agent", "agent", req.AgentName,
				"app_id", req.AgentAppID, "open", n, "resource", req.Resource, "task_id", req.TaskID)
			return Grant{}, &DeniedError{Err: ErrTooManyPending, Reason: fmt.Sprintf(
				"agent %q already has %d consent requests waiting for the user; answer them (`agentidd consent list`) or let them time out",
				req.AgentName, n)}
		}
		p = m.openLocked(req, k, now)
	}
	m.mu.Unlock()
	m.revokedBoth(expired, orphaned)

	if !joined {
		m.log.Info("consent requested", "request_id", p.req.ID, "agent", req.AgentAppID, "mode", req.Mode,
			"resource", req.Resource, "scopes", req.Scopes, "task_id", req.TaskID)
		m.publish(p.req)
		if m.o.Prompter != nil {
			ctx, cancel := context.WithCancel(context.Background())
			m.mu.Lock()
			p.cancel = cancel
			settled := m.byID[p.req.ID] != p
			m.mu.Unlock()
			if settled {
				cancel()
			} else {
				go m.runPrompt(ctx, p)
			}
		}
	}
	return m.wait(ctx, p, wait)
}

// findLocked returns a live grant covering req, or nil. A delegated grant
// is live only while its parent is.
func (m *Manager) findLocked(req Request, now time.Time) *Grant {
	for _, g := range m.grants {
		if !g.Expired(now) && g.Covers(req) && m.parentLiveLocked(g, now) {
			return g
		}
	}
	return nil
}

func (m *Manager) parentLiveLocked(g *Grant, now time.Time) bool {
	if g.ParentGrantID == "" {
		return true
	}
	p, ok := m.grants[g.ParentGrantID]
	return ok && !p.Expired(now)
}

// delegationLocked checks a delegated request against its parent grant:
// it must exist, be live, be the same user's and belong to the agent that
// delegated (the last link of req.Chain). It then sets req.Chain to the
// full chain the parent grant records plus the parent agent, so a grant
// always names everyone the work passed through. Undelegated requests
// pass unchanged.
func (m *Manager) delegationLocked(req *Request, now time.Time) error {
	if req.Chain == nil {
		return nil
	}
	parent := req.Chain[len(req.Chain)-1]
	deny := func(format string, args ...any) error {
		return &DeniedError{Reason: fmt.Sprintf(format, args...), Err: ErrParentGrant}
	}
	if req.ParentGrantID == "" {
		return deny("agent %q delegated without naming its grant", parent)
	}
	p, ok := m.grants[req.ParentGrantID]
	switch {
	case !ok || p.Expired(now) || !m.parentLiveLocked(p, now):
		return deny("the parent grant %s is not live (revoked, expired or never made)", req.ParentGrantID)
	case p.UserOID != req.UserOID:
		return deny("the parent grant %s is another user's", req.ParentGrantID)
	case p.AgentName != parent:
		return deny("the parent grant %s is not agent %q's", req.ParentGrantID, parent)
	}
	full := append(slices.Clone(p.Chain), p.AgentName)
	if len(req.Chain) > len(full) || !slices.Equal(full[len(full)-len(req.Chain):], req.Chain) {
		return deny("the delegation chain does not match the parent grant %s", req.ParentGrantID)
	}
	req.Chain = full
	return nil
}

// expireLocked removes expired grants, the delegated grants that depended
// on them, and stale denials.
func (m *Manager) expireLocked(now time.Time) (expired, orphaned []Grant) {
	for id, g := range m.grants {
		if g.Expired(now) {
			expired = append(expired, *g)
			delete(m.grants, id)
		}
	}
	orphaned = m.orphansLocked()
	n := len(m.denies)
	m.denies = slices.DeleteFunc(m.denies, func(d deny) bool { return !now.Before(d.Until) })
	if len(expired) > 0 || len(orphaned) > 0 || n != len(m.denies) {
		m.gen++
	}
	return expired, orphaned
}

// orphansLocked removes and returns every grant whose parent grant is gone,
// transitively: delegated work must not outlive the delegating agent's
// grant.
func (m *Manager) orphansLocked() []Grant {
	var out []Grant
	for {
		n := len(out)
		for id, g := range m.grants {
			if g.ParentGrantID == "" {
				continue
			}
			if _, ok := m.grants[g.ParentGrantID]; !ok {
				out = append(out, *g)
				delete(m.grants, id)
			}
		}
		if len(out) == n {
			break
		}
	}
	return out
}

// openByAgentLocked counts the open requests of req's agent. A scan, not a
// counter: it is bounded by agents × maxPendingPerAgent and cannot drift
// from m.pending.
func (m *Manager) openByAgentLocked(req Request) int {
	n := 0
	for _, p := range m.pending {
		if p.req.AgentAppID == req.AgentAppID && p.req.AgentName == req.AgentName {
			n++
		}
	}
	return n
}

func (m *Manager) openLocked(req Request, k string, now time.Time) *pending {
	req.ID = newID("cr_")
	req.CreatedAt = now
	p := &pending{req: req, key: k, done: make(chan struct{}), cancel: func() {}}
	m.pending[k] = p
	m.byID[req.ID] = p
	// A real timer, not the injected clock: this bounds how long callers
	// and the prompt wait, which is elapsed time, not wall-clock validity.
	p.timer = time.AfterFunc(m.o.PromptTimeout, func() {
		_, _ = m.settle(p, outcome{reason: "nobody answered in time", via: "timeout"})
	})
	return p
}

func (m *Manager) wait(ctx context.Context, p *pending, wait time.Duration) (Grant, error) {
	select {
	case <-p.done:
		return p.result()
	default:
	}
	if wait <= 0 {
		return Grant{}, &PendingError{RequestID: p.req.ID}
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-p.done:
		return p.result()
	case <-t.C:
		return Grant{}, &PendingError{RequestID: p.req.ID}
	case <-ctx.Done():
		return Grant{}, fmt.Errorf("consent: waiting for request %s: %w", p.req.ID, ctx.Err())
	}
}

func (p *pending) result() (Grant, error) {
	if p.grant != nil {
		return *p.grant, nil
	}
	return Grant{}, p.err
}

// defaultDuration is what a prompt (which only says yes or no) grants.
func defaultDuration(req Request) time.Duration {
	if req.TaskID != "" {
		return TaskOnly
	}
	return OneHour
}

func (m *Manager) runPrompt(ctx context.Context, p *pending) {
	req := p.req
	d := defaultDuration(req)
	display := req.AgentDisplayName
	if display == "" {
		display = req.AgentName
	}
	m.mu.RLock()
	shown := m.capped(d)
	m.mu.RUnlock()
	text := platform.BuildPromptText(display, req.AgentAppID, req.Process.ExePath, req.Process.SHA256Prefix,
		req.Resource, req.Scopes, req.Mode, DurationText(shown, req.TaskID), req.Justification, req.Chain)
	name := m.o.Prompter.Name()
	dec, err := m.o.Prompter.Prompt(ctx, platform.Prompt{RequestID: req.ID, Text: text, Timeout: m.o.PromptTimeout})
	if ctx.Err() != nil {
		return // settled elsewhere (terminal, timeout, task end)
	}
	via := "prompt:" + name
	var o outcome
	switch {
	case err != nil:
		// Not an answer: leave the request open for the terminal path.
		m.log.Warn("consent prompt failed; waiting for terminal approval", "prompter", name, "request_id", req.ID, "err", err)
		return
	case dec == platform.PromptAllow:
		o = outcome{allow: true, d: d, via: via}
	case dec == platform.PromptDeny:
		o = outcome{remember: true, via: via, reason: "denied by the user"}
	case dec == platform.PromptTimeout:
		o = outcome{via: "timeout", reason: "nobody answered in time"}
	case dec == platform.PromptDismissed:
		o = outcome{via: via, reason: "prompt dismissed"}
	default:
		m.log.Warn("consent prompt returned no decision", "prompter", name, "request_id", req.ID, "decision", int(dec))
		return
	}
	if _, err := m.settle(p, o); err != nil && !errors.Is(err, ErrNoSuchRequest) {
		m.log.Warn("consent decision not persisted", "request_id", req.ID, "err", err)
	}
}

type outcome struct {
	allow    bool
	d        time.Duration // for allow: TaskOnly or a positive duration
	remember bool          // for deny: hold for DenyCooldown
	via      string
	reason   string
	err      error // for a request closed without an answer: the cause the waiter's DeniedError wraps
}

// capped applies the policy cap; TaskOnly is capped by TaskOnlyCap too. Callers hold mu (SetMaxGrant changes the cap).
func (m *Manager) capped(d time.Duration) time.Duration {
	if d == TaskOnly {
		return TaskOnly
	}
	return min(d, m.o.MaxGrant)
}

// SetDenyCooldown changes how long denials decided from now on are remembered (config reload); denials already
// remembered keep their end. Zero or less means the default.
func (m *Manager) SetDenyCooldown(d time.Duration) {
	if d <= 0 {
		d = defaultDenyCooldown
	}
	m.mu.Lock()
	m.o.DenyCooldown = d
	m.mu.Unlock()
}

// SetMaxGrant changes the policy cap on grants (managed-policy reload, and at start for grants restored from disk).
// Grants that would outlive the new cap now end at now + cap: an administrator who shortens the cap means it for
// consent already given too. A longer cap extends nothing. Zero or less, or more than SevenDays, means SevenDays.
func (m *Manager) SetMaxGrant(d time.Duration) error {
	if d <= 0 || d > SevenDays {
		d = SevenDays
	}
	end := m.now().Add(d)
	m.mu.Lock()
	m.o.MaxGrant = d
	for id, g := range m.grants {
		if g.NotAfter.After(end) {
			// A copy: Grant values handed out earlier must not change under their holders.
			shortened := *g
			shortened.NotAfter = end
			m.grants[id] = &shortened
			m.gen++
		}
	}
	m.mu.Unlock()
	return m.persist()
}

// notAfter is a new grant's end; callers hold mu.
func (m *Manager) notAfter(now time.Time, d time.Duration) time.Time {
	if d == TaskOnly {
		return now.Add(min(TaskOnlyCap, m.o.MaxGrant))
	}
	return now.Add(min(d, m.o.MaxGrant))
}

// settle answers p once; later answers get ErrNoSuchRequest. Waiters learn
// a denial from p.err; settle's own error is only about bookkeeping (the
// request was already settled, or the state was not persisted). Persistence
// and OnDecision happen before waiters are released, so the audit record
// of the decision precedes any token issued under it.
func (m *Manager) settle(p *pending, o outcome) (Grant, error) {
	now := m.now()
	m.mu.Lock()
	if m.byID[p.req.ID] != p {
		m.mu.Unlock()
		return Grant{}, fmt.Errorf("%w: %s", ErrNoSuchRequest, p.req.ID)
	}
	delete(m.byID, p.req.ID)
	delete(m.pending, p.key)
	p.timer.Stop()
	p.cancel()
	req := p.req
	dec := Decision{Request: req, Allowed: o.allow, Via: o.via, Remembered: o.remember, Reason: o.reason}
	switch {
	case o.allow:
		g := &Grant{
			ID: newID("g_"), UserOID: req.UserOID, AgentAppID: req.AgentAppID, AgentName: req.AgentName,
			Mode: req.Mode, Resource: req.Resource, Scopes: req.Scopes, Chain: req.Chain, ParentGrantID: req.ParentGrantID,
			NotAfter: m.notAfter(now, o.d), CreatedAt: now, DecidedBy: DecidedByUser, DecidedVia: o.via, RequestID: req.ID,
		}
		if o.d == TaskOnly {
			g.TaskID, g.TaskPID, g.TaskProcStart = req.TaskID, req.Process.PID, req.Process.StartTime
		}
		m.grants[g.ID] = g
		p.grant = g
		dec.Grant = g
		m.gen++
	case o.remember:
		until := now.Add(m.o.DenyCooldown)
		m.denies = append(m.denies, deny{
			UserOID: req.UserOID, AgentAppID: req.AgentAppID, AgentName: req.AgentName, Mode: req.Mode, Resource: req.Resource,
			Chain: req.Chain, Scopes: req.Scopes, Until: until, RequestID: req.ID,
		})
		p.err = &DeniedError{RequestID: req.ID, Remembered: true, Until: until, Reason: o.reason}
		m.gen++
	default:
		p.err = &DeniedError{RequestID: req.ID, Reason: o.reason, Err: o.err}
	}
	m.mu.Unlock()

	err := m.persist()
	if p.grant != nil {
		m.watchTask(*p.grant)
	}
	m.log.Info("consent decided", "request_id", req.ID, "allowed", o.allow, "via", o.via, "remembered", o.remember, "reason", o.reason)
	if m.o.OnDecision != nil {
		m.o.OnDecision(dec)
	}
	close(p.done)
	if p.grant != nil {
		return *p.grant, err
	}
	return Grant{}, err
}

// Decide answers a pending request from the terminal (or any non-prompter
// path); a prompt still showing is cancelled. d is TaskOnly, OneHour,
// EightHours or SevenDays (capped by MaxGrant); 0 means task-only when the
// request has a task, else one hour. via defaults to ViaTerminal.
func (m *Manager) Decide(requestID string, allow bool, d time.Duration, via string) (Grant, error) {
	m.mu.RLock()
	p := m.byID[requestID]
	m.mu.RUnlock()
	if p == nil {
		return Grant{}, fmt.Errorf("%w: %s", ErrNoSuchRequest, requestID)
	}
	if via == "" {
		via = ViaTerminal
	}
	if !allow {
		return m.settle(p, outcome{remember: true, via: via, reason: "denied by the user"})
	}
	d, err := validDuration(d, p.req.TaskID)
	if err != nil {
		return Grant{}, err
	}
	return m.settle(p, outcome{allow: true, d: d, via: via})
}

func validDuration(d time.Duration, taskID string) (time.Duration, error) {
	switch d {
	case 0:
		if taskID != "" {
			return TaskOnly, nil
		}
		return OneHour, nil
	case TaskOnly:
		if taskID == "" {
			return 0, fmt.Errorf("%w: the request has no task", ErrBadDuration)
		}
		return d, nil
	case OneHour, EightHours, SevenDays:
		return d, nil
	}
	return 0, ErrBadDuration
}

// GrantByPolicy records a grant that managed policy made without asking,
// so it is listed, revocable and audited like any other.
func (m *Manager) GrantByPolicy(req Request, d time.Duration) (Grant, error) {
	if err := normalize(&req); err != nil {
		return Grant{}, err
	}
	d, err := validDuration(d, req.TaskID)
	if err != nil {
		return Grant{}, err
	}
	now := m.now()
	m.mu.Lock()
	if err := m.delegationLocked(&req, now); err != nil {
		m.mu.Unlock()
		return Grant{}, err
	}
	g := &Grant{
		ID: newID("g_"), UserOID: req.UserOID, AgentAppID: req.AgentAppID, AgentName: req.AgentName,
		Mode: req.Mode, Resource: req.Resource, Scopes: req.Scopes, Chain: req.Chain, ParentGrantID: req.ParentGrantID,
		NotAfter: m.notAfter(now, d), CreatedAt: now, DecidedBy: DecidedByPolicy, DecidedVia: ViaPolicy,
	}
	if d == TaskOnly {
		g.TaskID, g.TaskPID, g.TaskProcStart = req.TaskID, req.Process.PID, req.Process.StartTime
	}
	m.grants[g.ID] = g
	m.gen++
	m.mu.Unlock()
	err = m.persist()
	m.watchTask(*g)
	return *g, err
}

// Pending lists open consent requests, oldest first.
func (m *Manager) Pending() []Request {
	m.mu.RLock()
	out := make([]Request, 0, len(m.byID))
	for _, p := range m.byID {
		out = append(out, p.req)
	}
	m.mu.RUnlock()
	slices.SortFunc(out, func(a, b Request) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// Grants lists live grants, oldest first.
func (m *Manager) Grants() []Grant {
	now := m.now()
	m.mu.RLock()
	out := make([]Grant, 0, len(m.grants))
	for _, g := range m.grants {
		if !g.Expired(now) {
			c := *g
			c.Scopes = slices.Clone(g.Scopes)
			c.Chain = slices.Clone(g.Chain)
			out = append(out, c)
		}
	}
	m.mu.RUnlock()
	slices.SortFunc(out, func(a, b Grant) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// Revoke ends one grant. OnRevoke has run when it returns. A non-nil error
// with a grant means the revocation holds in memory but was not persisted.
func (m *Manager) Revoke(grantID, reason string) (Grant, error) {
	m.mu.Lock()
	g, ok := m.grants[grantID]
	var orphaned []Grant
	if ok {
		delete(m.grants, grantID)
		orphaned = m.orphansLocked()
		m.gen++
	}
	m.mu.Unlock()
	if !ok {
		return Grant{}, fmt.Errorf("%w: %s", ErrNoSuchGrant, grantID)
	}
	m.revoked([]Grant{*g}, reason)
	m.revoked(orphaned, ReasonParentEnded)
	return *g, m.persist()
}

// RevokeAgent ends every grant of an agent identity (the managed policy no
// longer allows it), of every local agent that shares the app id: the caller
// knows only the identity, and ending too much costs a prompt, not a leak.
// Its open requests close with ErrNotConfigured: it may no longer ask.
func (m *Manager) RevokeAgent(agentAppID, reason string) []Grant {
	m.cancelOpen(func(r Request) bool { return r.AgentAppID == agentAppID }, reason, ErrNotConfigured)
	return m.revokeWhere(func(g *Grant) bool { return g.AgentAppID == agentAppID }, reason)
}

// RevokeLocalAgent revokes the grants of one configured agent (name and agent identity), leaving any other local agent
// that shares the identity its own.
func (m *Manager) RevokeLocalAgent(name, agentAppID, reason string) []Grant {
	m.cancelOpen(func(r Request) bool { return r.AgentName == name && r.AgentAppID == agentAppID }, reason, ErrNotConfigured)
	return m.revokeWhere(func(g *Grant) bool { return g.AgentName == name && g.AgentAppID == agentAppID }, reason)
}

// EndTask ends the grants bound to taskID and drops open requests for it:
// nobody should approve work for a task that is over. Only those of the
// named local agents are touched: the ones the caller is attested as.
func (m *Manager) EndTask(taskID string, agents map[string]bool) []Grant {
	if taskID == "" {
		return nil
	}
	m.cancelOpen(func(r Request) bool { return r.TaskID == taskID && agents[r.AgentName] }, "task ended", nil)
	return m.revokeWhere(func(g *Grant) bool { return g.TaskID == taskID && agents[g.AgentName] }, ReasonTaskEnded)
}

// cancelOpen settles the open requests that match as not given (nothing remembered): no prompt or terminal approval
// can grant them any more, and their waiters are told why. The revocations above call it first, so that an agent whose
// grants end (removed from the config, its task over) cannot be granted again through a prompt still open.
func (m *Manager) cancelOpen(match func(Request) bool, reason string, cause error) {
	m.mu.RLock()
	var open []*pending
	for _, p := range m.byID {
		if match(p.req) {
			open = append(open, p)
		}
	}
	m.mu.RUnlock()
	for _, p := range open {
		_, _ = m.settle(p, outcome{via: "cancelled", reason: reason, err: cause})
	}
}

func (m *Manager) revokeWhere(match func(*Grant) bool, reason string) []Grant {
	var out []Grant
	m.mu.Lock()
	for id, g := range m.grants {
		if match(g) {
			out = append(out, *g)
			delete(m.grants, id)
		}
	}
	var orphaned []Grant
	if len(out) > 0 {
		orphaned = m.orphansLocked()
		m.gen++
	}
	m.mu.Unlock()
	if len(out) == 0 {
		return nil
	}
	m.revoked(out, reason)
	m.revoked(orphaned, ReasonParentEnded)
	if err := m.persist(); err != nil {
		m.log.Error("grant revocation not persisted", "err", err)
	}
	return out
}

// ResetDenies forgets remembered denials, so the next request prompts.
func (m *Manager) ResetDenies() {
	m.mu.Lock()
	m.denies = nil
	m.gen++
	m.mu.Unlock()
	if err := m.persist(); err != nil {
		m.log.Error("deny reset not persisted", "err", err)
	}
}

// Expire ends every grant past its NotAfter now, calling OnRevoke with
// ReasonExpired before it returns. The daemon may call it on resume from
// sleep; ExpireLoop calls it every second.
func (m *Manager) Expire() []Grant {
	m.mu.Lock()
	out, orphaned := m.expireLocked(m.now())
	m.mu.Unlock()
	m.revokedBoth(out, orphaned)
	if len(out)+len(orphaned) > 0 {
		if err := m.persist(); err != nil {
			m.log.Error("grant expiry not persisted", "err", err)
		}
	}
	return out
}

// ExpireLoop runs Expire until ctx ends. It polls rather than sleeping to
// the next expiry because timers do not advance while a laptop sleeps.
// It first watches the processes of task-bound grants restored from disk
// (see Options.WatchExit): by the time the daemon starts this loop,
// OnRevoke is safe to call.
func (m *Manager) ExpireLoop(ctx context.Context) {
	m.mu.RLock()
	var restored []Grant
	for id, g := range m.grants {
		if _, watched := m.watches[id]; !watched && g.TaskPID > 0 {
			restored = append(restored, *g)
		}
	}
	m.mu.RUnlock()
	for _, g := range restored {
		m.watchTask(g)
	}
	t := time.NewTicker(expireEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.Expire()
		}
	}
}

// Subscribe streams newly opened consent requests (for `agentidd consent
// watch`). A slow reader misses requests rather than blocking Check; it
// can always list them with Pending. Call the returned func to stop.
func (m *Manager) Subscribe() (<-chan Request, func()) {
	ch := make(chan Request, subscriberBuffer)
	m.subMu.Lock()
	id := m.nextSub
	m.nextSub++
	m.subs[id] = ch
	m.subMu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			m.subMu.Lock()
			delete(m.subs, id)
			m.subMu.Unlock()
			close(ch)
		})
	}
}

func (m *Manager) publish(r Request) {
	m.subMu.Lock()
	defer m.subMu.Unlock()
	for _, ch := range m.subs {
		select {
		case ch <- r:
		default:
			m.log.Warn("consent watcher too slow; request dropped from its stream", "request_id", r.ID)
		}
	}
}

// watchTask follows the process that asked for task-bound grant g and
// revokes g when it exits.
func (m *Manager) watchTask(g Grant) {
	if m.o.WatchExit == nil || g.TaskID == "" || g.TaskPID <= 0 {
		return
	}
	id := g.ID
	stop := m.o.WatchExit(g.TaskPID, g.TaskProcStart, func() {
		if _, err := m.Revoke(id, ReasonTaskExited); err != nil && !errors.Is(err, ErrNoSuchGrant) {
			m.log.Error("task grant revocation not persisted", "grant_id", id, "err", err)
		}
	})
	if stop == nil {
		stop = func() {}
	}
	m.mu.Lock()
	_, live := m.grants[id]
	old, had := m.watches[id]
	if live {
		m.watches[id] = stop
	}
	m.mu.Unlock()
	// The process may have exited, and the grant gone, before we got here.
	if !live {
		stop()
	}
	if had {
		old()
	}
}

func (m *Manager) revokedBoth(expired, orphaned []Grant) {
	m.revoked(expired, ReasonExpired)
	m.revoked(orphaned, ReasonParentEnded)
}

// revoked stops the grants' process watches and runs OnRevoke. Call it
// without m.mu held.
func (m *Manager) revoked(gs []Grant, reason string) {
	if len(gs) == 0 {
		return
	}
	var stops []func()
	m.mu.Lock()
	for _, g := range gs {
		if stop, ok := m.watches[g.ID]; ok {
			delete(m.watches, g.ID)
			stops = append(stops, stop)
		}
	}
	m.mu.Unlock()
	for _, stop := range stops {
		stop()
	}
	for _, g := range gs {
		m.log.Info("grant revoked", "grant_id", g.ID, "agent", g.AgentAppID, "reason", reason)
		if m.o.OnRevoke != nil {
			m.o.OnRevoke(g, reason)
		}
	}
}

// persist saves the current state if it is newer than what was saved.
func (m *Manager) persist() error {
	if m.o.Persist == nil {
		return nil
	}
	m.persistMu.Lock()
	defer m.persistMu.Unlock()
	m.mu.RLock()
	gen := m.gen
	st := persisted{Version: stateVersion, Grants: make([]*Grant, 0, len(m.grants)), Denies: slices.Clone(m.denies)}
	for _, g := range m.grants {
		st.Grants = append(st.Grants, g)
	}
	m.mu.RUnlock()
	if gen <= m.savedGen {
		return nil
	}
	slices.SortFunc(st.Grants, func(a, b *Grant) int { return cmp.Compare(a.ID, b.ID) })
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("consent: encode state: %w", err)
	}
	if err := m.o.Persist.SaveConsent(data); err != nil {
		return fmt.Errorf("consent: save state: %w", err)
	}
	m.savedGen = gen
	return nil
}

func newID(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go ≥1.24)
	return prefix + hex.EncodeToString(b[:])
}
