package audit

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// crashCopy copies what the log has handed to the OS so far, which is what a kill -9 leaves behind, minus a torn last
// line that Open would drop before the daemon verifies.
func crashCopy(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	raw = raw[:bytes.LastIndexByte(raw, '\n')+1]
	dst := filepath.Join(t.TempDir(), "crashed.jsonl")
	if err := os.WriteFile(dst, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestSyncedHeadIsOnDisk is the reviewer's reproduction: a record appended after the flush must not be anchored,
// because a crash loses it and the log would then look truncated, and after a restart rewritten, for ever.
func TestSyncedHeadIsOnDisk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	// A flush interval longer than the test keeps the second record in memory only.
	l, err := Open(path, Options{FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.Append(sample(1)); err != nil {
		t.Fatal(err)
	}
	seq, hash, err := l.SyncedHead()
	if err != nil || seq != 1 {
		t.Fatalf("SyncedHead = %d, %v; want seq 1", seq, err)
	}
	if _, err := l.Append(sample(2)); err != nil {
		t.Fatal(err)
	}
	if s, _ := l.Head(); s != 2 {
		t.Fatalf("Head seq = %d, want 2", s)
	}

	crashed := crashCopy(t, path)
	if n, err := VerifyAnchor(crashed, seq, hash); err != nil || n != 1 {
		t.Fatalf("VerifyAnchor after the crash = %d, %v; want 1 line and the anchor found", n, err)
	}
	// The restarted daemon reuses seq 2 for a new record; the anchor still verifies, now and later.
	l2, err := Open(crashed, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if id, err := l2.Append(sample(3)); err != nil || id != "2" {
		t.Fatalf("Append after the crash = %q, %v", id, err)
	}
	if err := l2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyAnchor(crashed, seq, hash); err != nil {
		t.Fatalf("VerifyAnchor after the restart: %v", err)
	}

	// Once everything is written, the synced head catches up with Head.
	seq, hash, err = l.SyncedHead()
	if hs, hh := l.Head(); err != nil || seq != hs || hash != hh {
		t.Fatalf("SyncedHead after a full flush = %d %s, %v; Head = %d %s", seq, hash, err, hs, hh)
	}
}

// TestSyncedHeadUnderConcurrentAppends: records appended while SyncedHead runs never make it report a line that is not
// yet in the file.
func TestSyncedHeadUnderConcurrentAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := Open(path, Options{FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for round := range 40 {
		// Appenders run while SyncedHead flushes, so lines join the chain between its write and its fsync.
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for i := range 10 {
					if _, err := l.Append(sample(round*1000 + g*100 + i)); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		seq, hash, err := l.SyncedHead()
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := VerifyAnchor(crashCopy(t, path), seq, hash); err != nil {
			t.Fatalf("anchor (%d) not covered by the file: %v", seq, err)
		}
	}
}

// TestSyncedHeadEmptyLog: nothing written yet anchors nothing.
func TestSyncedHeadEmptyLog(t *testing.T) {
	l, err := Open(filepath.Join(t.TempDir(), "audit.jsonl"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if seq, hash, err := l.SyncedHead(); err != nil || seq != 0 || hash != string(genesis) {
		t.Fatalf("SyncedHead of an empty log = %d %q, %v", seq, hash, err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.SyncedHead(); err != ErrClosed {
		t.Fatalf("SyncedHead after Close: %v", err)
	}
}
