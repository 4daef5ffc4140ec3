package ipc

import "fmt"

// startTimeLive re-reads the process's start time by pid: a pid that now
// names a different process has a different start time. Used where the OS
// offers no handle on a process that Go can reach without cgo (macOS; a
// kqueue NOTE_EXIT watch would be the next step up).
type startTimeLive struct {
	pid   int
	start uint64
	read  func(pid int) (uint64, error)
}

func (l *startTimeLive) alive() error {
	s, err := l.read(l.pid)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPeerGone, err)
	}
	if s != l.start {
		return fmt.Errorf("%w: pid %d reused", ErrPeerGone, l.pid)
	}
	return nil
}

func (*startTimeLive) close() {}
