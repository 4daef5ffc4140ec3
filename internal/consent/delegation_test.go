package consent

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// parentGrant makes a one-hour grant for the base agent, the delegating parent of the tests below.
func parentGrant(t *testing.T, m *Manager) Grant {
	t.Helper()
	_, err := m.Check(context.Background(), baseReq(), 0)
	mustPending(t, err)
	return approve(t, m, OneHour)
}

// childReq is work the base agent ("files-helper") passed to another agent.
func childReq(parentGrantID string) Request {
	r := baseReq()
	r.AgentName, r.AgentAppID, r.AgentDisplayName = "summariser", "agent-app-2", "Summariser"
	r.Chain = []string{"files-helper"}
	r.ParentGrantID = parentGrantID
	return r
}

func mustParentDenied(t *testing.T, err error) {
	t.Helper()
	var de *DeniedError
	if !errors.As(err, &de) || !errors.Is(err, ErrParentGrant) || de.Remembered {
		t.Fatalf("err = %v, want a not-remembered *DeniedError wrapping ErrParentGrant", err)
	}
}

func TestDelegationNeedsLiveParentGrant(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(r *Request, parent Grant, c *clock)
		ok     bool
	}{
		{"valid parent", func(*Request, Grant, *clock) {}, true},
		{"no parent grant named", func(r *Request, _ Grant, _ *clock) { r.ParentGrantID = "" }, false},
		{"unknown parent grant", func(r *Request, _ Grant, _ *clock) { r.ParentGrantID = "g_nope" }, false},
		{"parent grant of another agent", func(r *Request, _ Grant, _ *clock) { r.Chain = []string{"planner"} }, false},
		{"parent grant of another user", func(r *Request, _ Grant, _ *clock) { r.UserOID = "user-2" }, false},
		{"expired parent grant", func(_ *Request, _ Grant, c *clock) { c.Add(OneHour) }, false},
		{"chain longer than the parent's", func(r *Request, _ Grant, _ *clock) { r.Chain = []string{"planner", "files-helper"} }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newFakePrompter()
			m, c := newTestManager(t, Options{Prompter: p})
			parent := parentGrant(t, m)
			<-p.shown
			r := childReq(parent.ID)
			tc.mutate(&r, parent, c)
			_, err := m.Check(context.Background(), r, 0)
			if !tc.ok {
				mustParentDenied(t, err)
				if n := len(m.Pending()); n != 0 {
					t.Fatalf("an invalid delegation opened %d consent request(s)", n)
				}
				if n := p.calls.Load(); n != 1 {
					t.Fatalf("an invalid delegation prompted (%d prompts)", n)
				}
				return
			}
			mustPending(t, err)
			shown := <-p.shown
			if want := "Asked through: files-helper → Summariser"; !strings.Contains(shown.Text.Body, want) {
				t.Errorf("prompt does not show the chain %q:\n%s", want, shown.Text.Body)
			}
			g := approve(t, m, OneHour)
			if g.ParentGrantID != parent.ID || !slices.Equal(g.Chain, []string{"files-helper"}) {
				t.Fatalf("delegated grant = %+v", g)
			}
			if got, err := m.Check(context.Background(), childReq(parent.ID), 0); err != nil || got.ID != g.ID {
				t.Fatalf("delegated grant does not cover its own request: %v %v", got.ID, err)
			}
		})
	}
}

func TestDelegationRecordsTheFullChain(t *testing.T) {
	m, _ := newTestManager(t, Options{})
	ctx := context.Background()
	parent := parentGrant(t, m)
	_, err := m.Check(ctx, childReq(parent.ID), 0)
	mustPending(t, err)
	child := approve(t, m, OneHour)

	// The summariser passes the work on; the broker only knows the immediate parent.
	r := baseReq()
	r.AgentName, r.AgentAppID = "mailer", "agent-app-3"
	r.Chain, r.ParentGrantID = []string{"summariser"}, child.ID
	_, err = m.Check(ctx, r, 0)
	mustPending(t, err)
	if p := m.Pending(); len(p) != 1 || !slices.Equal(p[0].Chain, []string{"files-helper", "summariser"}) {
		t.Fatalf("pending = %+v, want the full chain files-helper → summariser", p)
	}
	grand := approve(t, m, OneHour)
	if !slices.Equal(grand.Chain, []string{"files-helper", "summariser"}) {
		t.Fatalf("grant chain = %v", grand.Chain)
	}
	// A request that already names the full chain is the same question.
	r.Chain = []string{"files-helper", "summariser"}
	if got, err := m.Check(ctx, r, 0); err != nil || got.ID != grand.ID {
		t.Fatalf("full-chain request: %v %v", got.ID, err)
	}
}

func TestParentGrantEndTakesDelegatedGrantsWithIt(t *testing.T) {
	type rev struct{ id, reason string }
	var mu sync.Mutex
	var revoked []rev
	per := &memPersister{}
	m, c := newTestManager(t, Options{Persist: per, OnRevoke: func(g Grant, reason string) {
		mu.Lock()
		revoked = append(revoked, rev{g.ID, reason})
		mu.Unlock()
	}})
	ctx := context.Background()
	parent := parentGrant(t, m)
	_, err := m.Check(ctx, childReq(parent.ID), 0)
	mustPending(t, err)
	child := approve(t, m, SevenDays) // outlives the parent's hour on its own

	if _, err := m.Revoke(parent.ID, "revoked by the user"); err != nil {
		t.Fatal(err)
	}
	want := []rev{{parent.ID, "revoked by the user"}, {child.ID, ReasonParentEnded}}
	if !slices.Equal(revoked, want) {
		t.Fatalf("revoked = %v, want %v", revoked, want)
	}
	if gs := m.Grants(); len(gs) != 0 {
		t.Fatalf("grants left = %+v", gs)
	}

	// Expiry of the parent ends the child too, and a restart does not revive an orphan.
	revoked = nil
	parent = parentGrant(t, m)
	_, err = m.Check(ctx, childReq(parent.ID), 0)
	mustPending(t, err)
	child = approve(t, m, SevenDays)
	saved := slices.Clone(per.data)
	c.Add(OneHour)
	m.Expire()
	want = []rev{{parent.ID, ReasonExpired}, {child.ID, ReasonParentEnded}}
	if !slices.Equal(revoked, want) {
		t.Fatalf("revoked at expiry = %v, want %v", revoked, want)
	}
	per.data = saved // the daemon was down across the parent's expiry
	m2, err := NewManager(Options{Persist: per, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	if gs := m2.Grants(); len(gs) != 0 {
		t.Fatalf("after restart grants = %+v, want the orphan dropped", gs)
	}
}

// fakeWatch is an Options.WatchExit that records what it watches and lets the test end processes.
type fakeWatch struct {
	mu      sync.Mutex
	watched map[int]func() // pid → onExit, while watched
	starts  map[int]uint64
	stopped []int
	dead    map[int]bool // exits before it is watched
}

func newFakeWatch() *fakeWatch {
	return &fakeWatch{watched: map[int]func(){}, starts: map[int]uint64{}, dead: map[int]bool{}}
}

func (f *fakeWatch) WatchExit(pid int, start uint64, onExit func()) func() {
	f.mu.Lock()
	if f.dead[pid] {
		f.mu.Unlock()
		onExit()
		return func() {}
	}
	f.watched[pid], f.starts[pid] = onExit, start
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if _, ok := f.watched[pid]; ok {
			delete(f.watched, pid)
			f.stopped = append(f.stopped, pid)
		}
	}
}

// exit ends pid: its watcher fires once, as a real one would.
func (f *fakeWatch) exit(t *testing.T, pid int) {
	t.Helper()
	f.mu.Lock()
	onExit, ok := f.watched[pid]
	delete(f.watched, pid)
	f.mu.Unlock()
	if !ok {
		t.Fatalf("pid %d is not watched", pid)
	}
	onExit()
}

func (f *fakeWatch) isWatched(pid int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.watched[pid]
	return ok
}

func taskReq(task string, pid int) Request {
	r := baseReq()
	r.TaskID = task
	r.Process = Process{PID: pid, ExePath: "/usr/bin/helper", SHA256Prefix: "abcd1234", StartTime: uint64(pid) * 1000}
	return r
}

func TestTaskGrantEndsWhenItsProcessExits(t *testing.T) {
	var revoked []string
	w := newFakeWatch()
	m, _ := newTestManager(t, Options{WatchExit: w.WatchExit, OnRevoke: func(g Grant, reason string) { revoked = append(revoked, reason) }})
	ctx := context.Background()

	_, err := m.Check(ctx, taskReq("task-1", 101), 0)
	mustPending(t, err)
	g := approve(t, m, 0)
	if g.TaskPID != 101 || g.TaskProcStart != 101000 || !w.isWatched(101) {
		t.Fatalf("task grant %+v not watched with the requester's pid and start time (%v)", g, w.starts)
	}
	w.exit(t, 101)
	if gs := m.Grants(); len(gs) != 0 || !slices.Equal(revoked, []string{ReasonTaskExited}) {
		t.Fatalf("after exit: grants %+v, revoked %v", gs, revoked)
	}
	_, err = m.Check(ctx, taskReq("task-1", 101), 0)
	mustPending(t, err) // the task asks again

	// A grant ended otherwise stops its watch.
	m.EndTask("task-1", helperOnly)
	_, err = m.Check(ctx, taskReq("task-2", 102), 0)
	mustPending(t, err)
	approve(t, m, 0)
	m.EndTask("task-2", helperOnly)
	if w.isWatched(102) || !slices.Contains(w.stopped, 102) {
		t.Fatalf("EndTask left pid 102 watched (stopped %v)", w.stopped)
	}

	// A time grant is not tied to the process, even when the request had a task.
	_, err = m.Check(ctx, taskReq("task-3", 103), 0)
	mustPending(t, err)
	timed := approve(t, m, OneHour)
	if w.isWatched(103) {
		t.Fatal("a one-hour grant is watched like a task grant")
	}
	if _, err := m.Revoke(timed.ID, "test"); err != nil { // it would cover every task below
		t.Fatal(err)
	}

	// The requester exited while the user was deciding: the grant ends at once.
	w.mu.Lock()
	w.dead[104] = true
	w.mu.Unlock()
	_, err = m.Check(ctx, taskReq("task-4", 104), 0)
	mustPending(t, err)
	g4 := approve(t, m, 0)
	for _, g := range m.Grants() {
		if g.ID == g4.ID {
			t.Fatalf("grant %s of an exited process is still live", g4.ID)
		}
	}
}

func TestTaskGrantWatchedAgainAfterRestart(t *testing.T) {
	per := &memPersister{}
	m, c := newTestManager(t, Options{Persist: per, WatchExit: newFakeWatch().WatchExit})
	_, err := m.Check(context.Background(), taskReq("task-1", 201), 0)
	mustPending(t, err)
	g := approve(t, m, 0)

	w := newFakeWatch()
	m2, err := NewManager(Options{Persist: per, Now: c.Now, WatchExit: w.WatchExit})
	if err != nil {
		t.Fatal(err)
	}
	if w.isWatched(201) {
		t.Fatal("watched before ExpireLoop: OnRevoke might not be safe yet")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m2.ExpireLoop(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for !w.isWatched(201) {
		if time.Now().After(deadline) {
			t.Fatal("restored task grant not watched")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if w.starts[201] != 201000 {
		t.Fatalf("restored watch start time = %d", w.starts[201])
	}
	w.exit(t, 201)
	if gs := m2.Grants(); len(gs) != 0 {
		t.Fatalf("restored grant %s outlived its process: %+v", g.ID, gs)
	}
}
