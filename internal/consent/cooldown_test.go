package consent

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/agentidd/agentidd/platform"
)

// TestDenyHoldsForEveryTask: a task id is the agent's own label, so a new one must not reopen a question the user
// has just answered no to.
func TestDenyHoldsForEveryTask(t *testing.T) {
	fp := newFakePrompter()
	m, c := newTestManager(t, Options{Prompter: fp, DenyCooldown: 10 * time.Minute})
	ctx := context.Background()
	r := baseReq()
	r.TaskID = "t1"
	fp.answers <- platform.PromptDeny
	var de *DeniedError
	if _, err := m.Check(ctx, r, 5*time.Second); !errors.As(err, &de) || !de.Remembered {
		t.Fatalf("err = %v, want remembered denial", err)
	}
	prompts := fp.calls.Load()
	for _, task := range []string{"t2", "t3", ""} {
		r := baseReq()
		r.TaskID = task
		_, err := m.Check(ctx, r, 0)
		if !errors.As(err, &de) || !de.Remembered {
			t.Errorf("task %q: err = %v, want remembered denial", task, err)
		}
	}
	if n := len(m.Pending()); n != 0 {
		t.Errorf("pending = %d, want none", n)
	}
	if got := fp.calls.Load(); got != prompts {
		t.Errorf("prompts %d→%d, want no new prompt", prompts, got)
	}
	c.Add(10 * time.Minute)
	r.TaskID = "t2"
	if _, err := m.Check(ctx, r, 0); !errors.As(err, new(*PendingError)) {
		t.Fatalf("after cool-down: %v, want pending", err)
	}
}

// TestPendingRequestsCappedPerAgent: an agent that varies task ids, resources or scopes cannot open an unbounded
// number of prompts; the request over the cap fails at once without one, and other agents are unaffected.
func TestPendingRequestsCappedPerAgent(t *testing.T) {
	fp := newFakePrompter()
	m, _ := newTestManager(t, Options{Prompter: fp})
	ctx := context.Background()
	task := func(i int) Request {
		r := baseReq()
		r.TaskID = fmt.Sprintf("t%d", i)
		return r
	}
	first := ""
	for i := range maxPendingPerAgent {
		_, err := m.Check(ctx, task(i), 0)
		id := mustPending(t, err)
		if i == 0 {
			first = id
		}
	}
	waitPrompts(t, fp, maxPendingPerAgent)

	_, err := m.Check(ctx, task(maxPendingPerAgent), 0)
	var de *DeniedError
	if !errors.As(err, &de) || de.Remembered || !errors.Is(err, ErrTooManyPending) {
		t.Fatalf("over the cap: err = %v, want a not-remembered *DeniedError wrapping ErrTooManyPending", err)
	}
	if n := len(m.Pending()); n != maxPendingPerAgent {
		t.Fatalf("pending = %d, want %d", n, maxPendingPerAgent)
	}

	// Joining an open request opens nothing, so the cap does not apply.
	if _, err := m.Check(ctx, task(0), 0); mustPending(t, err) != first {
		t.Fatal("identical request did not join the open one")
	}
	// Another agent has its own budget.
	other := baseReq()
	other.AgentName, other.AgentAppID = "mailer", "agent-app-3"
	_, err = m.Check(ctx, other, 0)
	mustPending(t, err)
	waitPrompts(t, fp, maxPendingPerAgent+1)

	// An answered request frees its place.
	if _, err := m.Decide(first, true, 0, ""); err != nil {
		t.Fatal(err)
	}
	_, err = m.Check(ctx, task(maxPendingPerAgent), 0)
	mustPending(t, err)
	waitPrompts(t, fp, maxPendingPerAgent+2)
	time.Sleep(50 * time.Millisecond)
	if got := fp.calls.Load(); got != maxPendingPerAgent+2 {
		t.Fatalf("prompts = %d, want %d: the refused request must not prompt", got, maxPendingPerAgent+2)
	}
}

// waitPrompts waits until the prompter has been called n times (prompts run on their own goroutines).
func waitPrompts(t *testing.T, fp *fakePrompter, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for fp.calls.Load() < int32(n) {
		if time.Now().After(deadline) {
			t.Fatalf("prompts = %d, want %d", fp.calls.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}
