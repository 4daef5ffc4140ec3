package daemon

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/agentidd/agentidd/platform"
)

// fakeProcs is a ProcessInspector over a table the test edits: pid → start time; absent = exited.
type fakeProcs struct {
	mu    sync.Mutex
	procs map[int]uint64
}

func (f *fakeProcs) set(pid int, start uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if start == 0 {
		delete(f.procs, pid)
		return
	}
	f.procs[pid] = start
}

func (f *fakeProcs) Inspect(pid int) (platform.Process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	start, ok := f.procs[pid]
	if !ok {
		return platform.Process{}, fmt.Errorf("inspect pid %d: %w", pid, platform.ErrNoSuchProcess)
	}
	return platform.Process{PID: pid, StartTime: start}, nil
}

func (f *fakeProcs) ExeDigest(string) (string, error)  { return "", platform.ErrUnsupportedPlatform }
func (f *fakeProcs) Ancestors(int, int) ([]int, error) { return nil, platform.ErrUnsupportedPlatform }

func TestTaskExitWatcher(t *testing.T) {
	tests := []struct {
		name      string
		start     uint64 // what the broker passed
		running   uint64 // the live process's start time; 0 = not running
		then      func(f *fakeProcs)
		stopFirst bool
		wantExit  bool
	}{
		{"still running", 100, 100, func(*fakeProcs) {}, false, false},
		{"exits", 100, 100, func(f *fakeProcs) { f.set(7, 0) }, false, true},
		{"pid reused by another process", 100, 100, func(f *fakeProcs) { f.set(7, 200) }, false, true},
		{"gone before the watch", 100, 0, func(*fakeProcs) {}, false, true},
		{"pid already reused before the watch", 100, 300, func(*fakeProcs) {}, false, true},
		{"unknown start is read at watch time", 0, 100, func(f *fakeProcs) { f.set(7, 200) }, false, true},
		{"stopped before it exits", 100, 100, func(f *fakeProcs) { f.set(7, 0) }, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each case waits out a poll interval or two
			f := &fakeProcs{procs: map[int]uint64{}}
			f.set(7, tc.running)
			d := &Daemon{inspect: f, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			watch := d.taskExitWatcher()
			exited := make(chan struct{}, 2)
			stop := watch(7, tc.start, func() { exited <- struct{}{} })
			if tc.stopFirst {
				stop()
			}
			tc.then(f)
			select {
			case <-exited:
				if !tc.wantExit {
					t.Fatal("onExit ran for a live (or unwatched) process")
				}
			case <-time.After(exitPollEvery + 500*time.Millisecond):
				if tc.wantExit {
					t.Fatal("onExit did not run within a poll interval")
				}
			}
			stop()
			select {
			case <-exited:
				t.Fatal("onExit ran twice")
			case <-time.After(exitPollEvery + 200*time.Millisecond):
			}
		})
	}
}

func TestExitWatcherStopsPollingWhenIdle(t *testing.T) {
	f := &fakeProcs{procs: map[int]uint64{1: 10, 2: 20}}
	w := newExitWatcher(f, 10*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	var mu sync.Mutex
	var exits []int
	stop1 := w.watch(1, 10, func() { mu.Lock(); exits = append(exits, 1); mu.Unlock() })
	w.watch(2, 20, func() { mu.Lock(); exits = append(exits, 2); mu.Unlock() })
	stop1()
	f.set(1, 0)
	f.set(2, 0)
	deadline := time.Now().Add(2 * time.Second)
	for {
		w.mu.Lock()
		running := w.running
		w.mu.Unlock()
		if !running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("poller still running with nothing to watch")
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(exits) != 1 || exits[0] != 2 {
		t.Fatalf("exits = %v, want only the still-watched pid 2", exits)
	}
}
