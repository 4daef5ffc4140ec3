package daemon

import (
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/agentidd/agentidd/platform"
)

// exitPollEvery is how often task processes are looked at. A pidfd would tell at once, but it is Linux-only and only
// platform/* may carry build tags; a second's delay is well within what "ends with the task" promises.
const exitPollEvery = time.Second

// taskExitWatcher returns the consent.Options.WatchExit hook: it follows the process that asked for a task-bound grant
// and reports its exit, so the grant (and every token derived from it) ends with the task's process.
func (d *Daemon) taskExitWatcher() func(pid int, start uint64, onExit func()) (stop func()) {
	return newExitWatcher(d.inspect, exitPollEvery, d.log).watch
}

// exitWatcher polls all watched processes from one goroutine, which runs only while something is watched.
type exitWatcher struct {
	inspect platform.ProcessInspector
	every   time.Duration
	log     *slog.Logger

	mu      sync.Mutex
	next    uint64
	watches map[uint64]exitWatch
	running bool
}

type exitWatch struct {
	pid    int
	start  uint64
	onExit func()
}

func newExitWatcher(inspect platform.ProcessInspector, every time.Duration, log *slog.Logger) *exitWatcher {
	return &exitWatcher{inspect: inspect, every: every, log: log, watches: map[uint64]exitWatch{}}
}

// watch calls onExit once, on a goroutine of its own, when the process (pid, start) is gone; after stop it no longer
// starts onExit (one already started may still be running). A start of 0 (unknown) is read from the process now,
// which is weaker against PID reuse between the request and the decision: the broker should pass the start time it
// read at accept.
func (w *exitWatcher) watch(pid int, start uint64, onExit func()) (stop func()) {
	p, err := w.inspect.Inspect(pid)
	if err != nil || (start != 0 && p.StartTime != start) {
		w.log.Info("task process already gone; ending its grant", "pid", pid)
		go onExit()
		return func() {}
	}
	if start == 0 {
		start = p.StartTime
	}
	w.mu.Lock()
	id := w.next
	w.next++
	w.watches[id] = exitWatch{pid: pid, start: start, onExit: onExit}
	if !w.running {
		w.running = true
		go w.loop()
	}
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		delete(w.watches, id)
		w.mu.Unlock()
	}
}

func (w *exitWatcher) loop() {
	t := time.NewTicker(w.every)
	defer t.Stop()
	for range t.C {
		w.mu.Lock()
		if len(w.watches) == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		snapshot := maps.Clone(w.watches)
		w.mu.Unlock()
		for id, x := range snapshot {
			if w.alive(x) {
				continue
			}
			w.mu.Lock()
			_, still := w.watches[id]
			delete(w.watches, id)
			w.mu.Unlock()
			if still {
				w.log.Info("task process exited; ending its grant", "pid", x.pid)
				x.onExit()
			}
		}
	}
}

// alive fails closed: a process we cannot inspect any more counts as gone, since ending a grant early only costs a
// prompt while keeping one alive for a stranger costs the user's data.
func (w *exitWatcher) alive(x exitWatch) bool {
	p, err := w.inspect.Inspect(x.pid)
	return err == nil && p.StartTime == x.start
}
