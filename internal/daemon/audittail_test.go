package daemon

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentidd/agentidd/internal/audit"
	"github.com/agentidd/agentidd/internal/config"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// TestAuditTailQuotesUnreadableLine: a line planted in the log that is not a record is shown, quoted; its C1 controls
// (CSI U+009B opens an escape sequence on many terminals) and bidi overrides come out as escapes, not raw.
func TestAuditTailQuotesUnreadableLine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	l, err := audit.Open(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.Append(audit.Record{Event: audit.EventSignIn, Outcome: audit.OutcomeOK}); err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	const planted = "planted \u009b2J\u202eevil"
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(planted + "\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()

	a := &admin{d: &Daemon{cfg: &config.Config{StateDir: dir}, audit: l, log: slog.New(slog.DiscardHandler)}}
	out, err := a.AuditTail(context.Background(), &agentidv1.AuditTailRequest{N: 10})
	if err != nil {
		t.Fatal(err)
	}
	lines := out.GetLines()
	if len(lines) != 2 {
		t.Fatalf("%d lines, want the record and the planted line: %q", len(lines), lines)
	}
	got := lines[1]
	if strings.ContainsAny(got, "\u009b\u202e") {
		t.Errorf("the unreadable line reaches the reader raw: %q", got)
	}
	var shown map[string]string
	if err := json.Unmarshal([]byte(got), &shown); err != nil || shown["unreadable_line"] != planted || shown["hint"] == "" {
		t.Errorf("unreadable line shown as %s (%v), want it quoted with a hint", got, err)
	}
}
