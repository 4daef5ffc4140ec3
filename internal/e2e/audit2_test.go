//go:build linux

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	"github.com/agentidd/agentidd/ipc"
)

// TestAuditWriteFailureStopsTokens: when the audit log cannot be written (here the daemon's file size limit stands in
// for a full disk), the daemon stops issuing tokens, cached ones included, instead of handing out tokens no record
// names. After a restart with the disk writable again, the torn line the failed write left is dropped and reported and
// the chain verifies. Linux only: RLIMIT_FSIZE set on a running process through prlimit(2).
func TestAuditWriteFailureStopsTokens(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()
	c := e.conn()
	e.tokenWithApproval(c, emutest.ResourceScopeRead)
	if out := e.cli("audit", "verify"); !strings.Contains(out, "audit chain intact") { // flushes the log
		t.Fatalf("verify before the failure: %s", out)
	}
	fi, err := os.Stat(filepath.Join(e.stateDir, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	// A little room: the next flush writes part of a line, as a disk filling up mid-write does. Go ignores SIGXFSZ, so
	// the write fails with EFBIG.
	lim := unix.Rlimit{Cur: uint64(fi.Size()) + 100, Max: unix.RLIM_INFINITY}
	if err := unix.Prlimit(e.daemon.Process.Pid, unix.RLIMIT_FSIZE, &lim, nil); err != nil {
		t.Skipf("prlimit: %v", err)
	}

	// Served from the cache and recorded in memory; the flush that follows fails.
	deadline := time.Now().Add(10 * time.Second)
	var lastErr error
	for served := 0; ; served++ {
		_, lastErr = c.Token(context.Background(), testAgent, []string{emutest.ResourceScopeRead})
		if lastErr != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d tokens served over the %s after its writes started failing\n%s", served, "audit log", e.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(lastErr.Error(), "audit log cannot be written") || ipc.ErrorInfo(lastErr).GetReason() != "AUDIT_UNAVAILABLE" {
		t.Fatalf("refusal does not say why: %v (reason %q)", lastErr, ipc.ErrorInfo(lastErr).GetReason())
	}
	// It stays refused: the failure is sticky until a restart.
	time.Sleep(300 * time.Millisecond)
	if _, err := c.Token(context.Background(), testAgent, []string{emutest.ResourceScopeRead}); err == nil {
		t.Fatal("a token was served later with the audit log still failing")
	}

	e.stopDaemon()
	e.startDaemon() // a new process: no file size limit
	if !strings.Contains(e.log.String(), "torn last line") {
		t.Errorf("the restarted daemon did not report the torn line\n%s", e.log.String())
	}
	if out := e.cli("audit", "verify"); !strings.Contains(out, "audit chain intact") {
		t.Fatalf("verify after the restart: %s\n%s", out, e.log.String())
	}
	if _, err := e.conn().Token(context.Background(), testAgent, []string{emutest.ResourceScopeRead}); err != nil {
		t.Fatalf("token after the restart: %v", err)
	}
}
