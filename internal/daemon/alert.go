package daemon

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/agentidd/agentidd/platform"
)

// alertRepeat is how long the same trouble (a user's sign-in, one agent identity) stays told: every token derived
// from a revoked sign-in fails at once, and one notification is what the user needs, not one per token.
const alertRepeat = time.Hour

// alerter tells the user, through the session's prompter when it can show alerts, about failures only they can fix
// (DESIGN.md §6: purge, notify watchers, audit, and ask the user to act). Without one, the log and status say it.
type alerter struct {
	to  platform.Alerter // nil: nobody to tell
	now func() time.Time
	log *slog.Logger

	mu   sync.Mutex
	told map[string]time.Time // subject → when
}

func newAlerter(p platform.Prompter, now func() time.Time, log *slog.Logger) *alerter {
	a := &alerter{now: now, log: log, told: map[string]time.Time{}}
	a.to, _ = p.(platform.Alerter)
	return a
}

// alert shows title and body unless subject was told within alertRepeat. It does not wait for the desktop.
func (a *alerter) alert(subject, title, body string) {
	if a.to == nil {
		return
	}
	a.mu.Lock()
	now := a.now()
	if at, ok := a.told[subject]; ok && now.Sub(at) < alertRepeat {
		a.mu.Unlock()
		return
	}
	a.told[subject] = now
	a.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.to.Alert(ctx, title, body); err != nil {
			a.log.Warn("could not show an alert to the user", "subject", subject, "err", err)
		}
	}()
}

// forget lets subject be told again at once (the user signed in again: a later revocation is news).
func (a *alerter) forget(subject string) {
	a.mu.Lock()
	delete(a.told, subject)
	a.mu.Unlock()
}
