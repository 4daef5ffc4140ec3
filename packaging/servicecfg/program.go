package servicecfg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"runtime"
	"sync"
	"time"

	"github.com/kardianos/service"
)

// stopTimeout bounds how long Stop waits for the daemon to shut down; the Windows service manager gives a
// service about 20 s before it reports it hung.
const stopTimeout = 15 * time.Second

// RunManaged runs the daemon under the Windows service control manager when the SCM started this process, and
// reports handled=false everywhere else (systemd and launchd just send SIGTERM, which `agentidd run` already
// handles). Without it the SCM waits for a start acknowledgement that never comes and kills the process after 30 s.
func RunManaged(run func(ctx context.Context) error) (handled bool, err error) {
	if runtime.GOOS != "windows" || service.Interactive() {
		return false, nil
	}
	u, err := user.Current()
	if err != nil {
		return true, fmt.Errorf("service: finding the account it runs as: %w", err)
	}
	name, err := ServiceName(runtime.GOOS, u.Uid) // on Windows, Uid is the SID
	if err != nil {
		return true, fmt.Errorf("service: %w", err)
	}
	p := NewProgram(run, os.Exit)
	s, err := service.New(p, &service.Config{Name: name})
	if err != nil {
		return true, fmt.Errorf("service: %w", err)
	}
	if err := s.Run(); err != nil {
		return true, fmt.Errorf("service: %w", err)
	}
	return true, p.Err()
}

// Program adapts a blocking run(ctx) function to kardianos' Start/Stop callbacks.
type Program struct {
	run  func(ctx context.Context) error
	exit func(code int)

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

var _ service.Interface = (*Program)(nil)

// NewProgram returns a Program for run. exit is called with 1 when run fails on its own (not because of Stop):
// only a process exit makes the Windows service manager apply its restart-on-failure action; a service that
// stays "running" with a dead daemon inside would never be restarted.
func NewProgram(run func(ctx context.Context) error, exit func(code int)) *Program {
	return &Program{run: run, exit: exit}
}

// Start launches run and returns at once, as kardianos requires.
func (p *Program) Start(service.Service) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done != nil {
		return errors.New("already started")
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel, p.done = cancel, make(chan struct{})
	go func() {
		defer close(p.done)
		err := p.run(ctx)
		if ctx.Err() == nil {
			// run returned without being asked to.
			if err == nil {
				err = errors.New("daemon exited unexpectedly")
			}
			p.setErr(err)
			p.exit(1)
			return
		}
		if err != nil && !errors.Is(err, context.Canceled) {
			p.setErr(err)
		}
	}()
	return nil
}

// Stop cancels run and waits for it to return, at most stopTimeout.
func (p *Program) Stop(service.Service) error {
	p.mu.Lock()
	cancel, done := p.cancel, p.done
	p.mu.Unlock()
	if done == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-time.After(stopTimeout):
		return fmt.Errorf("daemon did not stop within %s", stopTimeout)
	}
}

// Err is the error run returned, if it failed.
func (p *Program) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *Program) setErr(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.err = err
}
