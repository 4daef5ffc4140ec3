package daemon

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/agentidd/agentidd/platform"
)

type fakeAlertPrompter struct{ shown chan string }

func (fakeAlertPrompter) Name() string { return "fake" }
func (fakeAlertPrompter) Prompt(context.Context, platform.Prompt) (platform.PromptDecision, error) {
	return 0, platform.ErrPromptUnavailable
}
func (p fakeAlertPrompter) Alert(_ context.Context, title, body string) error {
	p.shown <- title + ": " + body
	return nil
}

// promptOnly can prompt but not alert (like the zenity dialog prompter).
type promptOnly struct{}

func (promptOnly) Name() string { return "prompt-only" }
func (promptOnly) Prompt(context.Context, platform.Prompt) (platform.PromptDecision, error) {
	return 0, platform.ErrPromptUnavailable
}

func TestAlerterTellsOncePerSubject(t *testing.T) {
	p := fakeAlertPrompter{shown: make(chan string, 10)}
	now := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	a := newAlerter(p, func() time.Time { return now }, slog.New(slog.DiscardHandler))
	next := func() string {
		select {
		case s := <-p.shown:
			return s
		case <-time.After(2 * time.Second):
			return ""
		}
	}
	quiet := func(what string) {
		select {
		case s := <-p.shown:
			t.Errorf("%s: alerted again: %q", what, s)
		case <-time.After(100 * time.Millisecond):
		}
	}
	a.alert("user:u1", "sign in again", "revoked")
	if got := next(); got != "sign in again: revoked" {
		t.Fatalf("first alert = %q", got)
	}
	for range 50 { // a purge storm: every derived token fails at once
		a.alert("user:u1", "sign in again", "revoked")
	}
	quiet("the same subject within the hour")
	a.alert("agent:a1", "agent refused", "disabled")
	if got := next(); got != "agent refused: disabled" {
		t.Errorf("another subject = %q", got)
	}
	a.forget("user:u1") // signed in again
	a.alert("user:u1", "sign in again", "revoked again")
	if got := next(); got != "sign in again: revoked again" {
		t.Errorf("after forget = %q", got)
	}
	now = now.Add(alertRepeat)
	a.alert("agent:a1", "agent refused", "still disabled")
	if got := next(); got != "agent refused: still disabled" {
		t.Errorf("an hour later = %q", got)
	}

	// No prompter, or one that cannot alert: nothing to call, nothing to crash.
	newAlerter(nil, time.Now, slog.New(slog.DiscardHandler)).alert("user:u1", "t", "b")
	newAlerter(promptOnly{}, time.Now, slog.New(slog.DiscardHandler)).alert("user:u1", "t", "b")
}
