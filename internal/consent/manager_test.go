package consent

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentidd/agentidd/platform"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)} }
func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fakePrompter counts prompts and answers each with the next decision
// sent on answers, or blocks until ctx ends when block is set.
type fakePrompter struct {
	calls   atomic.Int32
	answers chan platform.PromptDecision
	shown   chan platform.Prompt
	err     error
}

func newFakePrompter() *fakePrompter {
	return &fakePrompter{answers: make(chan platform.PromptDecision, 1), shown: make(chan platform.Prompt, 100)}
}

func (f *fakePrompter) Name() string { return "fake" }
func (f *fakePrompter) Prompt(ctx context.Context, p platform.Prompt) (platform.PromptDecision, error) {
	f.calls.Add(1)
	f.shown <- p
	if f.err != nil {
		return 0, f.err
	}
	select {
	case d := <-f.answers:
		return d, nil
	case <-ctx.Done():
		return platform.PromptDismissed, ctx.Err()
	}
}

type memPersister struct {
	mu    sync.Mutex
	data  []byte
	saves int
}

func (p *memPersister) LoadConsent() ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.data), nil
}
func (p *memPersister) SaveConsent(b []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.data = slices.Clone(b)
	p.saves++
	return nil
}

// helperOnly is EndTask's agent set for a caller attested as baseReq's agent.
var helperOnly = map[string]bool{"files-helper": true}

func baseReq() Request {
	return Request{
		UserOID: "user-1", UserUPN: "alice@contoso.example",
		AgentName: "files-helper", AgentAppID: "agent-app-1", AgentDisplayName: "Files Helper",
		Mode: ModeOBO, Resource: "api://files.contoso.example", Scopes: []string{"Files.Read", "Files.Write"},
		Justification: "sort your files",
		Process:       Process{PID: 42, ExePath: "/usr/bin/helper", SHA256Prefix: "abcd1234"},
	}
}

func newTestManager(t *testing.T, o Options) (*Manager, *clock) {
	t.Helper()
	c := newClock()
	if o.Now == nil {
		o.Now = c.Now
	}
	m, err := NewManager(o)
	if err != nil {
		t.Fatal(err)
	}
	return m, c
}

// approve answers the single pending request from the terminal.
func approve(t *testing.T, m *Manager, d time.Duration) Grant {
	t.Helper()
	p := m.Pending()
	if len(p) != 1 {
		t.Fatalf("pending = %d, want 1", len(p))
	}
	g, err := m.Decide(p[0].ID, true, d, "")
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func mustPending(t *testing.T, err error) string {
	t.Helper()
	var pe *PendingError
	if !errors.As(err, &pe) {
		t.Fatalf("err = %v, want *PendingError", err)
	}
	return pe.RequestID
}

func TestCoverage(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Request)
		covered bool
	}{
		{"identical", func(*Request) {}, true},
		{"subset of scopes", func(r *Request) { r.Scopes = []string{"Files.Read"} }, true},
		{"same scopes unsorted, duplicated, padded", func(r *Request) { r.Scopes = []string{" Files.Write", "Files.Read", "Files.Read"} }, true},
		{"superset of scopes", func(r *Request) { r.Scopes = append(r.Scopes, "Files.Delete") }, false},
		{"other mode", func(r *Request) { r.Mode = ModeApp }, false},
		{"other resource", func(r *Request) { r.Resource = "api://other" }, false},
		{"other user", func(r *Request) { r.UserOID = "user-2" }, false},
		{"other agent", func(r *Request) { r.AgentAppID = "agent-app-2" }, false},
		{"other local agent, same app id", func(r *Request) { r.AgentName, r.Process.ExePath = "other-helper", "/usr/bin/other" }, false},
		// Delegated by the same agent under the first grant: a valid chain, but not the grant's.
		{"other chain", func(r *Request) { r.Chain = []string{"files-helper"} }, false},
		{"any task under a time grant", func(r *Request) { r.TaskID = "t1" }, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, _ := newTestManager(t, Options{})
			ctx := context.Background()
			_, err := m.Check(ctx, baseReq(), 0)
			mustPending(t, err)
			g := approve(t, m, OneHour)
			if g.DecidedVia != ViaTerminal || g.DecidedBy != DecidedByUser {
				t.Errorf("grant decided %s/%s", g.DecidedBy, g.DecidedVia)
			}
			r := baseReq()
			tc.mutate(&r)
			if r.Chain != nil {
				r.ParentGrantID = g.ID
			}
			got, err := m.Check(ctx, r, 0)
			if tc.covered {
				if err != nil || got.ID != g.ID {
					t.Fatalf("Check = %v, %v; want grant %s", got.ID, err, g.ID)
				}
				return
			}
			mustPending(t, err)
			if n := len(m.Pending()); n != 1 {
				t.Fatalf("pending = %d, want a new request", n)
			}
		})
	}
}

func TestInvalidRequest(t *testing.T) {
	m, _ := newTestManager(t, Options{})
	for _, mutate := range []func(*Request){
		func(r *Request) { r.UserOID = "" },
		func(r *Request) { r.AgentAppID = "" },
		func(r *Request) { r.AgentName = "" },
		func(r *Request) { r.Resource = "" },
		func(r *Request) { r.Mode = "impersonate" },
	} {
		r := baseReq()
		mutate(&r)
		if _, err := m.Check(context.Background(), r, 0); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("err = %v, want ErrInvalidRequest", err)
		}
	}
}

func TestExpiredGrantPromptsAgainAndRevokes(t *testing.T) {
	var revoked []string
	m, c := newTestManager(t, Options{OnRevoke: func(g Grant, reason string) { revoked = append(revoked, g.ID+":"+reason) }})
	ctx := context.Background()
	_, err := m.Check(ctx, baseReq(), 0)
	mustPending(t, err)
	g := approve(t, m, OneHour)
	if want := c.Now().Add(time.Hour); !g.NotAfter.Equal(want) {
		t.Fatalf("NotAfter = %v, want %v", g.NotAfter, want)
	}
	c.Add(59 * time.Minute)
	if _, err := m.Check(ctx, baseReq(), 0); err != nil {
		t.Fatalf("before expiry: %v", err)
	}
	c.Add(time.Minute)
	_, err = m.Check(ctx, baseReq(), 0)
	mustPending(t, err)
	if want := []string{g.ID + ":" + ReasonExpired}; !slices.Equal(revoked, want) {
		t.Fatalf("revoked = %v, want %v", revoked, want)
	}
	if gs := m.Grants(); len(gs) != 0 {
		t.Fatalf("grants after expiry = %v", gs)
	}
}

func TestExpireCallsOnRevoke(t *testing.T) {
	var got []string
	m, c := newTestManager(t, Options{OnRevoke: func(g Grant, reason string) { got = append(got, reason) }})
	_, _ = m.Check(context.Background(), baseReq(), 0)
	approve(t, m, OneHour)
	if out := m.Expire(); len(out) != 0 {
		t.Fatalf("expired too early: %v", out)
	}
	c.Add(2 * time.Hour)
	if out := m.Expire(); len(out) != 1 || !slices.Equal(got, []string{ReasonExpired}) {
		t.Fatalf("Expire = %v, OnRevoke reasons %v", out, got)
	}
}

func TestTaskBoundGrantEndsAtEndTask(t *testing.T) {
	var revoked []string
	m, c := newTestManager(t, Options{OnRevoke: func(g Grant, reason string) { revoked = append(revoked, reason) }})
	ctx := context.Background()
	r := baseReq()
	r.TaskID = "task-7"
	_, _ = m.Check(ctx, r, 0)
	g := approve(t, m, 0) // 0 with a task = task-only
	if g.TaskID != "task-7" || !g.NotAfter.Equal(c.Now().Add(TaskOnlyCap)) {
		t.Fatalf("grant = %+v", g)
	}
	other := r
	other.TaskID = "task-8"
	if _, err := m.Check(ctx, other, 0); err == nil {
		t.Fatal("task-bound grant covered another task")
	}
	if _, err := m.Check(ctx, r, 0); err != nil {
		t.Fatalf("same task: %v", err)
	}
	// Another agent's EndTask for the same task id ends nothing of this one's.
	if ended := m.EndTask("task-7", map[string]bool{"other-agent": true}); len(ended) != 0 {
		t.Fatalf("EndTask by another agent revoked %v", ended)
	}
	ended := m.EndTask("task-7", helperOnly)
	if len(ended) != 1 || ended[0].ID != g.ID || !slices.Equal(revoked, []string{ReasonTaskEnded}) {
		t.Fatalf("EndTask = %v, revoked %v", ended, revoked)
	}
	// The open request for task-8 is unaffected; task-7 asks again.
	_, err := m.Check(ctx, r, 0)
	mustPending(t, err)
	// Another agent cannot drop its open request; its own EndTask does.
	m.EndTask("task-7", map[string]bool{"other-agent": true})
	if !slices.ContainsFunc(m.Pending(), func(p Request) bool { return p.TaskID == "task-7" }) {
		t.Fatal("EndTask by another agent cancelled this one's open request")
	}
	m.EndTask("task-7", helperOnly)
	for _, p := range m.Pending() {
		if p.TaskID == "task-7" {
			t.Fatalf("request for ended task still pending: %+v", p)
		}
	}
}

func TestDecideDurations(t *testing.T) {
	tests := []struct {
		name    string
		task    string
		d       time.Duration
		max     time.Duration
		want    time.Duration
		wantErr bool
	}{
		{"default without task is 1h", "", 0, 0, time.Hour, false},
		{"8h", "", EightHours, 0, EightHours, false},
		{"7d", "", SevenDays, 0, SevenDays, false},
		{"policy cap", "", SevenDays, 8 * time.Hour, 8 * time.Hour, false},
		{"task-only without task", "", TaskOnly, 0, 0, true},
		{"arbitrary duration rejected", "", 3 * time.Hour, 0, 0, true},
		{"forever rejected", "", 100 * 365 * 24 * time.Hour, 0, 0, true},
		{"task-only capped by policy", "t", TaskOnly, time.Hour, time.Hour, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, c := newTestManager(t, Options{MaxGrant: tc.max})
			r := baseReq()
			r.TaskID = tc.task
			_, _ = m.Check(context.Background(), r, 0)
			id := m.Pending()[0].ID
			g, err := m.Decide(id, true, tc.d, "")
			if tc.wantErr {
				if !errors.Is(err, ErrBadDuration) {
					t.Fatalf("err = %v, want ErrBadDuration", err)
				}
				if len(m.Pending()) != 1 {
					t.Fatal("a rejected decision settled the request")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := g.NotAfter.Sub(c.Now()); got != tc.want {
				t.Fatalf("duration = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestDenyCooldown(t *testing.T) {
	fp := newFakePrompter()
	m, c := newTestManager(t, Options{Prompter: fp, DenyCooldown: 10 * time.Minute})
	ctx := context.Background()
	fp.answers <- platform.PromptDeny
	_, err := m.Check(ctx, baseReq(), 5*time.Second)
	var de *DeniedError
	if !errors.As(err, &de) || !de.Remembered {
		t.Fatalf("err = %v, want remembered denial", err)
	}
	tests := []struct {
		name   string
		mutate func(*Request)
		denied bool
	}{
		{"identical", func(*Request) {}, true},
		{"superset", func(r *Request) { r.Scopes = append(r.Scopes, "Files.Delete") }, true},
		{"subset asks again", func(r *Request) { r.Scopes = []string{"Files.Read"} }, false},
		{"other resource asks again", func(r *Request) { r.Resource = "api://x" }, false},
	}
	for _, tc := range tests {
		r := baseReq()
		tc.mutate(&r)
		before := fp.calls.Load()
		_, err := m.Check(ctx, r, 0)
		if tc.denied {
			if !errors.As(err, &de) || !de.Remembered || fp.calls.Load() != before {
				t.Errorf("%s: err = %v, prompts %d→%d; want immediate remembered denial", tc.name, err, before, fp.calls.Load())
			}
		} else {
			mustPending(t, err)
		}
	}
	c.Add(10 * time.Minute)
	if _, err := m.Check(ctx, baseReq(), 0); !errors.As(err, new(*PendingError)) {
		t.Fatalf("after cool-down: %v, want pending", err)
	}
}

// TestSetDenyCooldown: a reloaded cool-down applies to denials decided after it; one already remembered keeps its end.
func TestSetDenyCooldown(t *testing.T) {
	fp := newFakePrompter()
	m, c := newTestManager(t, Options{Prompter: fp, DenyCooldown: 10 * time.Minute})
	ctx := context.Background()
	fp.answers <- platform.PromptDeny
	var de *DeniedError
	if _, err := m.Check(ctx, baseReq(), 5*time.Second); !errors.As(err, &de) || !de.Remembered {
		t.Fatalf("err = %v, want a remembered denial", err)
	}
	first := de.Until
	m.SetDenyCooldown(time.Minute)
	other := baseReq()
	other.Resource = "api://x"
	fp.answers <- platform.PromptDeny
	if _, err := m.Check(ctx, other, 5*time.Second); !errors.As(err, &de) || !de.Remembered {
		t.Fatalf("err = %v, want a remembered denial", err)
	}
	if got := de.Until.Sub(c.Now()); got != time.Minute {
		t.Errorf("a denial after SetDenyCooldown(1m) is remembered for %v", got)
	}
	if _, err := m.Check(ctx, baseReq(), 0); !errors.As(err, &de) || !de.Until.Equal(first) {
		t.Errorf("the earlier denial: %v (until %v), want it kept until %v", err, de.Until, first)
	}
}

// A lowered cap shortens grants already given (and survives a restart); a raised one extends nothing.
func TestSetMaxGrant(t *testing.T) {
	per := &memPersister{}
	m, c := newTestManager(t, Options{Persist: per})
	askAndApprove := func(resource string, d time.Duration) Grant {
		t.Helper()
		req := baseReq()
		req.Resource = resource
		_, _ = m.Check(context.Background(), req, 0)
		return approve(t, m, d)
	}
	long := askAndApprove("api://long", SevenDays)
	brief := askAndApprove("api://brief", OneHour)

	c.Add(30 * time.Minute) // the 1h grant now has 30 minutes left
	if err := m.SetMaxGrant(time.Hour); err != nil {
		t.Fatal(err)
	}
	ends := map[string]time.Time{}
	for _, g := range m.Grants() {
		ends[g.ID] = g.NotAfter
	}
	if want := c.Now().Add(time.Hour); !ends[long.ID].Equal(want) {
		t.Errorf("7-day grant ends %v after the cap fell to 1h, want %v", ends[long.ID], want)
	}
	if !ends[brief.ID].Equal(brief.NotAfter) {
		t.Errorf("1h grant with 30 minutes left ends %v, want unchanged %v", ends[brief.ID], brief.NotAfter)
	}
	if long.NotAfter.Equal(ends[long.ID]) {
		t.Error("the Grant value handed out earlier changed under its holder")
	}
	// New grants obey the new cap.
	if g := askAndApprove("api://third", EightHours); !g.NotAfter.Equal(c.Now().Add(time.Hour)) {
		t.Errorf("new 8h grant ends %v, want capped at 1h", g.NotAfter)
	}
	// The shortened end was persisted.
	m2, err := NewManager(Options{Persist: per, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range m2.Grants() {
		if g.ID == long.ID && !g.NotAfter.Equal(ends[long.ID]) {
			t.Errorf("after a restart the grant ends %v, want %v", g.NotAfter, ends[long.ID])
		}
	}
	// Raising the cap again does not lengthen anything.
	if err := m.SetMaxGrant(SevenDays); err != nil {
		t.Fatal(err)
	}
	for _, g := range m.Grants() {
		if g.ID == long.ID && !g.NotAfter.Equal(ends[long.ID]) {
			t.Errorf("raising the cap moved the grant's end to %v", g.NotAfter)
		}
	}
}

func TestResetDeniesClears(t *testing.T) {
	m, _ := newTestManager(t, Options{})
	ctx := context.Background()
	_, _ = m.Check(ctx, baseReq(), 0)
	if _, err := m.Decide(m.Pending()[0].ID, false, 0, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Check(ctx, baseReq(), 0); !errors.As(err, new(*DeniedError)) {
		t.Fatalf("err = %v, want denied", err)
	}
	m.ResetDenies()
	_, err := m.Check(ctx, baseReq(), 0)
	mustPending(t, err)
}

func TestConcurrentIdenticalChecksPromptOnce(t *testing.T) {
	fp := newFakePrompter()
	m, _ := newTestManager(t, Options{Prompter: fp})
	const n = 50
	var wg sync.WaitGroup
	grants := make([]Grant, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			grants[i], errs[i] = m.Check(context.Background(), baseReq(), 10*time.Second)
		})
	}
	<-fp.shown
	// Give the rest time to join before answering; joiners arriving after
	// the answer find the grant, which is just as good.
	time.Sleep(50 * time.Millisecond)
	fp.answers <- platform.PromptAllow
	wg.Wait()
	if c := fp.calls.Load(); c != 1 {
		t.Fatalf("prompts = %d, want 1", c)
	}
	for i := range n {
		if errs[i] != nil || grants[i].ID != grants[0].ID || grants[i].ID == "" {
			t.Fatalf("caller %d: %v %v", i, grants[i].ID, errs[i])
		}
	}
	if g := grants[0]; g.DecidedVia != "prompt:fake" || !g.NotAfter.Equal(g.CreatedAt.Add(time.Hour)) {
		t.Fatalf("grant = %+v", g)
	}
}

func TestPromptShowsRequestFacts(t *testing.T) {
	fp := newFakePrompter()
	m, _ := newTestManager(t, Options{Prompter: fp, PromptTimeout: time.Minute})
	_, _ = m.Check(context.Background(), baseReq(), 0)
	p := <-fp.shown
	if p.RequestID != m.Pending()[0].ID || p.Timeout != time.Minute {
		t.Fatalf("prompt = %+v", p)
	}
	for _, w := range []string{"Files Helper", "/usr/bin/helper", "api://files.contoso.example", "Files.Read, Files.Write", "1 hour", "“sort your files”"} {
		if !strings.Contains(p.Text.Body, w) {
			t.Errorf("prompt body lacks %q:\n%s", w, p.Text.Body)
		}
	}
}

func TestTerminalDecisionWhilePromptShowing(t *testing.T) {
	fp := newFakePrompter()
	var decisions []Decision
	m, _ := newTestManager(t, Options{Prompter: fp, OnDecision: func(d Decision) { decisions = append(decisions, d) }})
	res := make(chan error, 1)
	go func() {
		_, err := m.Check(context.Background(), baseReq(), 10*time.Second)
		res <- err
	}()
	p := <-fp.shown
	g, err := m.Decide(p.RequestID, true, EightHours, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := <-res; err != nil {
		t.Fatalf("waiting caller: %v", err)
	}
	// The prompter's ctx is cancelled; a late answer changes nothing.
	fp.answers <- platform.PromptDeny
	if _, err := m.Decide(p.RequestID, false, 0, ""); !errors.Is(err, ErrNoSuchRequest) {
		t.Fatalf("second decision: %v", err)
	}
	if gs := m.Grants(); len(gs) != 1 || gs[0].ID != g.ID || g.DecidedVia != ViaTerminal {
		t.Fatalf("grants = %+v", gs)
	}
	if len(decisions) != 1 || !decisions[0].Allowed || decisions[0].Grant.ID != g.ID {
		t.Fatalf("decisions = %+v", decisions)
	}
}

func TestPromptTimeoutIsNotRemembered(t *testing.T) {
	tests := []struct {
		name     string
		prompter *fakePrompter
		answer   platform.PromptDecision
	}{
		{"no prompter, nobody answers", nil, 0},
		{"prompter times out", newFakePrompter(), platform.PromptTimeout},
		{"prompter dismissed", newFakePrompter(), platform.PromptDismissed},
		{"prompter fails, nobody uses terminal", &fakePrompter{shown: make(chan platform.Prompt, 10), err: platform.ErrPromptUnavailable}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{PromptTimeout: 100 * time.Millisecond}
			if tc.prompter != nil {
				o.Prompter = tc.prompter
				if tc.answer != 0 {
					tc.prompter.answers <- tc.answer
				}
			}
			m, _ := newTestManager(t, o)
			_, err := m.Check(context.Background(), baseReq(), 5*time.Second)
			var de *DeniedError
			if !errors.As(err, &de) || de.Remembered {
				t.Fatalf("err = %v, want unremembered denial", err)
			}
			if len(m.Pending()) != 0 {
				t.Fatal("request still pending")
			}
			_, err = m.Check(context.Background(), baseReq(), 0)
			mustPending(t, err)
		})
	}
}

func TestWaitShorterThanPromptReturnsPending(t *testing.T) {
	m, _ := newTestManager(t, Options{})
	_, err := m.Check(context.Background(), baseReq(), 20*time.Millisecond)
	id := mustPending(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := m.Check(ctx, baseReq(), time.Second); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ctx: %v", err)
	}
	if p := m.Pending(); len(p) != 1 || p[0].ID != id {
		t.Fatalf("pending = %+v, want the one joined request %s", p, id)
	}
}

func TestPersistenceRoundTrip(t *testing.T) {
	ps := &memPersister{}
	m, c := newTestManager(t, Options{Persist: ps})
	ctx := context.Background()
	_, _ = m.Check(ctx, baseReq(), 0)
	g := approve(t, m, EightHours)
	denied := baseReq()
	denied.Resource = "api://secret"
	_, _ = m.Check(ctx, denied, 0)
	if _, err := m.Decide(m.Pending()[0].ID, false, 0, ""); err != nil {
		t.Fatal(err)
	}

	m2, err := NewManager(Options{Persist: ps, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	got, err := m2.Check(ctx, baseReq(), 0)
	if err != nil || got.ID != g.ID || !got.NotAfter.Equal(g.NotAfter) || !slices.Equal(got.Scopes, g.Scopes) {
		t.Fatalf("reloaded grant = %+v, %v; want %+v", got, err, g)
	}
	if _, err := m2.Check(ctx, denied, 0); !errors.As(err, new(*DeniedError)) {
		t.Fatalf("reloaded denial: %v", err)
	}

	// Revocation persists too.
	if _, err := m2.Revoke(g.ID, "user"); err != nil {
		t.Fatal(err)
	}
	m3, err := NewManager(Options{Persist: ps, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	if gs := m3.Grants(); len(gs) != 0 {
		t.Fatalf("revoked grant came back: %+v", gs)
	}

	// Grants that ended while the daemon was down are not loaded.
	m4, _ := newTestManager(t, Options{Persist: ps})
	_, _ = m4.Check(ctx, baseReq(), 0)
	approve(t, m4, OneHour)
	c.Add(2 * time.Hour)
	m5, err := NewManager(Options{Persist: ps, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	if gs := m5.Grants(); len(gs) != 0 {
		t.Fatalf("expired grant loaded: %+v", gs)
	}
}

func TestCorruptStateRejected(t *testing.T) {
	for _, data := range []string{"{", `{"version":99}`} {
		if _, err := NewManager(Options{Persist: &memPersister{data: []byte(data)}}); err == nil {
			t.Errorf("state %q accepted", data)
		}
	}
}

func TestOnRevokeRunsBeforeRevokeReturns(t *testing.T) {
	var purged atomic.Bool
	m, _ := newTestManager(t, Options{OnRevoke: func(g Grant, reason string) {
		time.Sleep(20 * time.Millisecond) // a slow cache purge must still finish first
		purged.Store(true)
	}})
	_, _ = m.Check(context.Background(), baseReq(), 0)
	g := approve(t, m, OneHour)
	if _, err := m.Revoke(g.ID, "user asked"); err != nil {
		t.Fatal(err)
	}
	if !purged.Load() {
		t.Fatal("Revoke returned before OnRevoke finished")
	}
	if _, err := m.Revoke(g.ID, "again"); !errors.Is(err, ErrNoSuchGrant) {
		t.Fatalf("second revoke: %v", err)
	}
	_, err := m.Check(context.Background(), baseReq(), 0)
	mustPending(t, err)
}

func TestRevokeAgent(t *testing.T) {
	var n atomic.Int32
	m, _ := newTestManager(t, Options{OnRevoke: func(Grant, string) { n.Add(1) }})
	ctx := context.Background()
	for _, res := range []string{"api://a", "api://b"} {
		r := baseReq()
		r.Resource = res
		_, _ = m.Check(ctx, r, 0)
		approve(t, m, OneHour)
	}
	other := baseReq()
	other.AgentAppID = "agent-app-2"
	_, _ = m.Check(ctx, other, 0)
	approve(t, m, OneHour)
	if got := m.RevokeAgent("agent-app-1", "agent removed"); len(got) != 2 || n.Load() != 2 {
		t.Fatalf("RevokeAgent = %d grants, OnRevoke %d", len(got), n.Load())
	}
	if gs := m.Grants(); len(gs) != 1 || gs[0].AgentAppID != "agent-app-2" {
		t.Fatalf("left = %+v", gs)
	}
}

func TestSubscribe(t *testing.T) {
	m, _ := newTestManager(t, Options{})
	ch, stop := m.Subscribe()
	_, _ = m.Check(context.Background(), baseReq(), 0)
	_, _ = m.Check(context.Background(), baseReq(), 0) // joins: no second event
	select {
	case r := <-ch:
		if r.ID == "" || r.AgentAppID != "agent-app-1" {
			t.Fatalf("event = %+v", r)
		}
	case <-time.After(time.Second):
		t.Fatal("no event")
	}
	select {
	case r := <-ch:
		t.Fatalf("joined request published again: %+v", r)
	default:
	}
	stop()
	stop() // idempotent
	if _, ok := <-ch; ok {
		t.Fatal("channel open after stop")
	}
}

func TestGrantByPolicy(t *testing.T) {
	m, _ := newTestManager(t, Options{})
	g, err := m.GrantByPolicy(baseReq(), OneHour)
	if err != nil || g.DecidedBy != DecidedByPolicy {
		t.Fatalf("GrantByPolicy = %+v, %v", g, err)
	}
	if got, err := m.Check(context.Background(), baseReq(), 0); err != nil || got.ID != g.ID {
		t.Fatalf("Check = %v, %v", got.ID, err)
	}
}

func TestSubset(t *testing.T) {
	tests := []struct {
		a, b []string
		want bool
	}{
		{nil, nil, true},
		{nil, []string{"a"}, true},
		{[]string{"a"}, nil, false},
		{[]string{"a", "c"}, []string{"a", "b", "c"}, true},
		{[]string{"a", "d"}, []string{"a", "b", "c"}, false},
		{[]string{"b"}, []string{"a"}, false},
	}
	for _, tc := range tests {
		if got := subset(tc.a, tc.b); got != tc.want {
			t.Errorf("subset(%v, %v) = %v", tc.a, tc.b, got)
		}
	}
}

func BenchmarkCheckCovered(b *testing.B) {
	m, err := NewManager(Options{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := m.GrantByPolicy(baseReq(), OneHour); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	r := baseReq()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Check(ctx, r, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// Revoking an agent's grants (it left the config, say) also closes its open requests: approving one afterwards must
// not grant a removed agent, and its waiters learn why at once.
func TestRevokeLocalAgentClosesItsOpenRequests(t *testing.T) {
	m, _ := newTestManager(t, Options{})
	r := baseReq()
	waited := waitingCheck(t, m, r)
	id := m.Pending()[0].ID
	other := baseReq()
	other.AgentName = "twin"
	_, err := m.Check(context.Background(), other, 0)
	mustPending(t, err)

	m.RevokeLocalAgent(r.AgentName, r.AgentAppID, "agent removed from the config")
	var denied *DeniedError
	if err := <-waited; !errors.As(err, &denied) || denied.Remembered || !errors.Is(err, ErrNotConfigured) ||
		!strings.Contains(err.Error(), "agent removed") {
		t.Fatalf("waiter after the revocation: %v, want a not-remembered DeniedError wrapping ErrNotConfigured, naming the reason", err)
	}
	if _, err := m.Decide(id, true, time.Hour, ""); !errors.Is(err, ErrNoSuchRequest) {
		t.Fatalf("approving the closed request: %v, want ErrNoSuchRequest", err)
	}
	if p := m.Pending(); len(p) != 1 || p[0].AgentName != "twin" {
		t.Fatalf("pending after revoking one agent: %+v, want only the twin's", p)
	}
}

// A request for an agent the config no longer has is refused, not opened (Options.Configured).
func TestCheckRefusesAnAgentNoLongerConfigured(t *testing.T) {
	m, _ := newTestManager(t, Options{Configured: func(name, appID string) bool { return name != "files-helper" }})
	_, err := m.Check(context.Background(), baseReq(), time.Minute)
	var denied *DeniedError
	if !errors.As(err, &denied) || !errors.Is(err, ErrNotConfigured) || denied.Remembered {
		t.Fatalf("request for a removed agent: %v, want a not-remembered denial wrapping ErrNotConfigured", err)
	}
	if p := m.Pending(); len(p) != 0 {
		t.Fatalf("a request was opened for a removed agent: %+v", p)
	}
}

// A request closed because the policy excluded its agent identity says so too (the broker then answers POLICY).
func TestRevokeAgentClosesOpenRequestsAsNotAllowed(t *testing.T) {
	m, _ := newTestManager(t, Options{})
	waited := waitingCheck(t, m, baseReq())
	m.RevokeAgent(baseReq().AgentAppID, "the managed policy does not allow this agent identity")
	if err := <-waited; !errors.Is(err, ErrNotConfigured) {
		t.Fatalf("waiter after the policy excluded its agent: %v, want ErrNotConfigured", err)
	}
}

// waitingCheck starts a Check of r that waits for an answer, and returns once its request is open; the channel gets
// the Check's error.
func waitingCheck(t *testing.T, m *Manager, r Request) <-chan error {
	t.Helper()
	waited := make(chan error, 1)
	go func() {
		_, err := m.Check(context.Background(), r, time.Minute)
		waited <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for len(m.Pending()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no request opened")
		}
		time.Sleep(time.Millisecond)
	}
	return waited
}
