package audit

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// rotatingLog appends n records to a log that rotates every few kilobytes and keeps keep rotated files. Each Sync hands
// the buffer to the writer, which is where rotation happens.
func rotatingLog(t *testing.T, path string, n, keep int) (seq uint64, hash string) {
	t.Helper()
	l, err := Open(path, Options{MaxSize: 4 << 10, Keep: keep, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := l.Append(sample(i)); err != nil {
			t.Fatal(err)
		}
		if err := l.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	seq, hash = l.Head()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return seq, hash
}

func countLines(t *testing.T, path string) int {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(raw, []byte("\n"))
}

// TestRotationKeepsTheChain: the live file never grows past MaxSize, only Keep rotated files remain, and the chain
// verifies across every file boundary up to the anchored head.
func TestRotationKeepsTheChain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	seq, hash := rotatingLog(t, path, 200, 3)
	files, err := segments(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 4 {
		t.Fatalf("files %v, want 3 rotated and the live one", files)
	}
	if _, err := os.Stat(segmentPath(path, 4)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a fourth rotated file is kept: %v", err)
	}
	kept := 0
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > 4<<10 {
			t.Errorf("%s is %d bytes, over MaxSize", f, fi.Size())
		}
		if runtime.GOOS != "windows" && fi.Mode().Perm() != 0o600 { // Windows has ACLs, not modes
			t.Errorf("%s has mode %v", f, fi.Mode().Perm())
		}
		kept += countLines(t, f)
	}
	n, err := VerifyAnchor(path, seq, hash)
	if err != nil || n != kept || seq != 200 {
		t.Fatalf("VerifyAnchor = %d, %v (head seq %d); want %d lines kept of 200", n, err, seq, kept)
	}
	recs, err := tailRecords(path, countLines(t, path)+2)
	if err != nil || len(recs) != countLines(t, path)+2 || recs[len(recs)-1].Seq != 200 {
		t.Fatalf("Tail across the newest rotation: %d records, %v", len(recs), err)
	}
	for i := 1; i < len(recs); i++ {
		if recs[i].Seq != recs[i-1].Seq+1 {
			t.Fatalf("Tail is not in order across the rotation: %d then %d", recs[i-1].Seq, recs[i].Seq)
		}
	}
}

// TestRotationTamperingIsCaught: an edit in a rotated file, or a rotated file removed from the middle, breaks the
// chain, and the error names the file.
func TestRotationTamperingIsCaught(t *testing.T) {
	t.Run("edited", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "audit.jsonl")
		rotatingLog(t, path, 100, 3)
		victim := segmentPath(path, 2)
		raw, err := os.ReadFile(victim)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(victim, bytes.Replace(raw, []byte("files-helper"), []byte("files-helpeR"), 1), 0o600); err != nil {
			t.Fatal(err)
		}
		var le *LineError
		if _, err := Verify(path); !errors.As(err, &le) || le.File != victim || !strings.Contains(le.Reason, "edited") {
			t.Fatalf("Verify = %v, want an edited line in %s", err, victim)
		}
	})
	t.Run("middle file removed", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "audit.jsonl")
		rotatingLog(t, path, 100, 3)
		// Keep the numbering contiguous, as someone hiding a file would: .3 takes the place of .2.
		if err := os.Rename(segmentPath(path, 3), segmentPath(path, 2)); err != nil {
			t.Fatal(err)
		}
		var le *LineError
		if _, err := Verify(path); !errors.As(err, &le) || le.File != segmentPath(path, 1) {
			t.Fatalf("Verify = %v, want the chain broken at the start of %s", err, segmentPath(path, 1))
		}
	})
}

// TestRotationCrashBeforeNewFile: a crash after the live file was renamed away but before the new one was written
// leaves no live file; Open continues the chain from the rotated file instead of starting over at seq 1.
func TestRotationCrashBeforeNewFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	seq, _ := rotatingLog(t, path, 50, 3)
	for i := 3; i >= 1; i-- {
		_ = os.Rename(segmentPath(path, i), segmentPath(path, i+1))
	}
	if err := os.Rename(path, segmentPath(path, 1)); err != nil {
		t.Fatal(err)
	}
	l, err := Open(path, Options{MaxSize: 4 << 10, Keep: 3})
	if err != nil {
		t.Fatal(err)
	}
	id, err := l.Append(sample(99))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if want := seq + 1; id != strconv.FormatUint(want, 10) {
		t.Fatalf("first record after the crash has id %s, want %d", id, want)
	}
	if _, err := Verify(path); err != nil {
		t.Fatalf("Verify after the crash: %v", err)
	}
}
