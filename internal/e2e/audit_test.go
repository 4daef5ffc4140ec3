package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/agentidd/agentidd/client"
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

// TestAuditTailShowsADamagedLine: a line that is not a record (garbage with a terminal escape in it) does not
// make `agentidd audit tail` fail: the records around it are shown, the line is shown quoted for what it is, and
// `audit verify` is what fails.
func TestAuditTailShowsADamagedLine(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()
	e.tokenWithApproval(e.conn(), emutest.ResourceScopeRead)
	e.stopDaemon()
	// In the middle: a damaged last line stops the daemon at start (it cannot chain on), as it should.
	path := filepath.Join(e.stateDir, "audit.jsonl")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	first, rest, _ := bytes.Cut(raw, []byte("\n"))
	damaged := append(append(append([]byte{}, first...), "\ngarbage \x1b[2J\n"...), rest...)
	if err := os.WriteFile(path, damaged, 0o600); err != nil {
		t.Fatal(err)
	}
	e.startDaemon()

	out := e.cli("audit", "tail", "-n", "50")
	if !strings.Contains(out, "token.issued") || !strings.Contains(out, `"unreadable_line":"garbage \u001b[2J"`) ||
		strings.Contains(out, "\x1b") {
		t.Fatalf("audit tail with a damaged line:\n%q", out)
	}
	if out, err := e.cliErr("", "audit", "verify"); err == nil {
		t.Fatalf("verify accepted the damaged log: %s", out)
	}
}

// TestAuditNamesTokensByFingerprint: every token.issued record names the token it handed out by the first 16 hex
// digits of its SHA-256, whether it came from the IdP, from the cache, or from the state restored after a restart.
func TestAuditNamesTokensByFingerprint(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()
	c := e.conn()
	minted := e.tokenWithApproval(c, emutest.ResourceScopeRead)
	cached, err := c.Token(context.Background(), testAgent, []string{emutest.ResourceScopeRead})
	if err != nil || !cached.FromCache || cached.AccessToken != minted.AccessToken {
		t.Fatalf("second call: %+v, %v; want the same token from the cache", cached, err)
	}
	e.stopDaemon()
	e.startDaemon()
	restored, err := e.conn().Token(context.Background(), testAgent, []string{emutest.ResourceScopeRead})
	if err != nil || !restored.FromCache || restored.AccessToken != minted.AccessToken {
		t.Fatalf("after a restart: %+v, %v; want the persisted token from the cache", restored, err)
	}
	e.stopDaemon()

	sum := sha256.Sum256([]byte(minted.AccessToken))
	want := hex.EncodeToString(sum[:8])
	raw, err := os.ReadFile(filepath.Join(e.stateDir, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	sources := map[string]int{}
	for _, line := range bytes.Split(bytes.TrimSpace(raw), []byte("\n")) {
		var r struct {
			Event  string `json:"event"`
			Source string `json:"source"`
			Token  struct {
				SHA256 string `json:"sha256"`
			} `json:"token"`
		}
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		if r.Event != "token.issued" {
			continue
		}
		if r.Token.SHA256 != want {
			t.Errorf("token.issued (source %s) names the token %q, want %q", r.Source, r.Token.SHA256, want)
		}
		sources[r.Source]++
	}
	if sources["idp"] != 1 || sources["cache"] != 2 {
		t.Errorf("token.issued records by source = %v, want 1 idp and 2 cache", sources)
	}
}

// TestAuditRotation: the real daemon rotates its audit log by size, keeps audit_keep rotated files, and `agentidd audit
// verify` checks the chain across them, before and after a restart (the anchor lives in the newest file).
func TestAuditRotation(t *testing.T) {
	e := newEnv(t, envOptions{extraConfig: "rate_limit = 100000.0\nburst = 100000\naudit_max_mb = 1\naudit_keep = 2"})
	e.login()
	c := e.conn()
	e.tokenWithApproval(c, emutest.ResourceScopeRead)
	// ~700 bytes a record: 5,000 cached tokens write about 3.5 MiB, three rotations' worth.
	for range 5000 {
		if _, err := c.Token(context.Background(), testAgent, []string{emutest.ResourceScopeRead}); err != nil {
			t.Fatal(err)
		}
	}
	if out := e.cli("audit", "verify"); !strings.Contains(out, "audit chain intact") {
		t.Fatalf("verify after rotations: %s", out)
	}
	e.stopDaemon()
	live := filepath.Join(e.stateDir, "audit.jsonl")
	for _, f := range []string{live, live + ".1", live + ".2"} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if fi.Size() > 1<<20 {
			t.Errorf("%s is %d bytes, over audit_max_mb", f, fi.Size())
		}
	}
	if _, err := os.Stat(live + ".3"); !os.IsNotExist(err) {
		t.Errorf("a third rotated file is kept (audit_keep = 2): %v", err)
	}
	e.startDaemon()
	if out := e.cli("audit", "verify"); !strings.Contains(out, "audit chain intact") {
		t.Fatalf("verify after a restart: %s", out)
	}
	if out := e.cli("audit", "tail", "-n", "3"); strings.Count(out, "token.issued") != 3 {
		t.Errorf("audit tail -n 3 after rotations:\n%s", out)
	}
	// More than one answer holds is capped at the limit, not cut to the default 20.
	if out := e.cli("audit", "tail", "-n", "5000"); strings.Count(out, "\n") != 1000 {
		t.Errorf("audit tail -n 5000 printed %d lines, want 1000", strings.Count(out, "\n"))
	}
}

// TestAuditRecordsWhoAsked: a request for an agent the config does not have is recorded with the name asked for, and
// a consent approval names the requesting process's uid like a token record does.
func TestAuditRecordsWhoAsked(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()
	c := e.conn()
	if _, err := c.Token(context.Background(), "no-such-agent", []string{emutest.ResourceScopeRead}); client.Reason(err) != "UNKNOWN_AGENT" {
		t.Fatalf("unknown agent: %v", err)
	}
	e.tokenWithApproval(c, emutest.ResourceScopeRead)
	events := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(e.cli("audit", "tail", "-n", "20")), "\n") {
		var r struct {
			Event  string `json:"event"`
			Reason string `json:"reason"`
			Agent  struct {
				Name string `json:"name"`
			} `json:"agent"`
			Peer struct {
				UID string `json:"uid"`
			} `json:"peer"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		switch {
		case r.Event == "token.denied" && r.Reason == "UNKNOWN_AGENT":
			events["unknown"] = r.Agent.Name == "no-such-agent"
		case r.Event == "consent.approved":
			events["approved"] = r.Peer.UID == strconv.Itoa(os.Getuid())
		}
	}
	if !events["unknown"] || !events["approved"] {
		t.Fatalf("audit records (true = names who asked): %v\n%s", events, e.cli("audit", "tail", "-n", "20"))
	}
}
