package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentidd/agentidd/internal/entraemu/emutest"
)

// TestAuditAnchorCatchesTruncation: a log cut back to its first record still has a valid hash chain, but the anchor the
// daemon keeps in the encrypted store no longer matches, and `agentidd audit verify` says so.
func TestAuditAnchorCatchesTruncation(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()
	e.tokenWithApproval(e.conn(), emutest.ResourceScopeRead)
	if out := e.cli("audit", "verify"); !strings.Contains(out, "audit chain intact") {
		t.Fatalf("verify before tampering: %s", out)
	}
	e.stopDaemon()

	path := filepath.Join(e.stateDir, "audit.jsonl")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(raw, []byte("\n"))
	if len(lines) < 3 {
		t.Fatalf("expected several audit records, got %d lines", len(lines))
	}
	if err := os.WriteFile(path, lines[0], 0o600); err != nil {
		t.Fatal(err)
	}

	e.startDaemon()
	out, err := e.cliErr("", "audit", "verify")
	if err == nil || !strings.Contains(out, "audit chain broken") {
		t.Fatalf("verify after truncation: err=%v out=%s", err, out)
	}
	if !strings.Contains(e.log.String(), "the audit log does not verify") {
		t.Error("the daemon did not report the truncated audit log at start")
	}
	// The evidence survives a restart: the anchor is not moved forward over a broken log.
	e.stopDaemon()
	e.startDaemon()
	if out, err := e.cliErr("", "audit", "verify"); err == nil {
		t.Fatalf("verify after a restart accepted the truncated log: %s", out)
	}
}
