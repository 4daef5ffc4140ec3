//go:build !windows

package daemon_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/daemon"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestStateDirTightened: a state directory left open to other users (made by hand, or by an older install) is made
// 0700 at start, and the log says so; MkdirAll alone leaves it as it was.
func TestStateDirTightened(t *testing.T) {
	emu := emutest.Start(t, emutest.Options{})
	cfgPath, socket := inProcessSetup(t, emu, lifecycleAgent, "")
	stateDir := filepath.Join(filepath.Dir(cfgPath), "state")
	if err := os.Chmod(stateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, daemon.Options{ConfigPath: cfgPath, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("daemon did not stop")
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := client.Dial(socket)
		if err == nil {
			_, err = c.Admin.Status(context.Background(), &agentidv1.StatusRequest{})
			c.Close()
			if err == nil {
				break
			}
		}
		select {
		case err := <-done:
			t.Fatalf("daemon exited at start: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not come up: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	fi, err := os.Stat(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o700 {
		t.Errorf("state directory mode %#o after start, want 0700", got)
	}
	if !strings.Contains(logs.String(), "state directory mode tightened") {
		t.Errorf("the log does not say the state directory was tightened:\n%s", logs.String())
	}
}
