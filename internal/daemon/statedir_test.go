//go:build !windows

package daemon_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentidd/agentidd/internal/entraemu/emutest"
)

// TestStateDirTightened: a state directory left open to other users (made by hand, or by an older install) is made
// 0700 at start, and the log says so; MkdirAll alone leaves it as it was.
func TestStateDirTightened(t *testing.T) {
	emu := emutest.Start(t, emutest.Options{})
	cfgPath, socket := inProcessSetup(t, emu, lifecycleAgent, "")
	stateDir := filepath.Join(filepath.Dir(cfgPath), "state")
	if err := os.Chmod(stateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	var logs emutest.LockedBuffer
	runInProcessLogging(t, cfgPath, socket, nil, &logs)
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
