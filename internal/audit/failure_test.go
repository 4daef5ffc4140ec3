package audit

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// failures collects what OnFailure reports.
type failures struct {
	mu   sync.Mutex
	errs []error
}

func (f *failures) add(err error) { f.mu.Lock(); f.errs = append(f.errs, err); f.mu.Unlock() }

func (f *failures) get() []error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]error(nil), f.errs...)
}

// TestWriteFailureStopsTheLog: once a write fails (disk full, I/O error), the chain in memory has moved past the file;
// the log refuses every later record and says so once through OnFailure, so the daemon can stop issuing tokens it
// cannot record.
func TestWriteFailureStopsTheLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := Open(path, Options{FlushInterval: time.Hour, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	var got failures
	l.OnFailure(got.add)
	if _, err := l.Append(sample(1)); err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	// A descriptor that cannot be written stands in for a full disk.
	ro, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	l.writeMu.Lock()
	good := l.f
	l.f = ro
	l.writeMu.Unlock()
	t.Cleanup(func() { _ = good.Close() })

	if _, err := l.Append(sample(2)); err != nil {
		t.Fatalf("Append before the write: %v", err)
	}
	werr := l.Sync()
	if werr == nil {
		t.Fatal("Sync over a failed write succeeded")
	}
	if _, err := l.Append(sample(3)); err == nil || err.Error() != werr.Error() {
		t.Fatalf("Append after the failed write = %v, want %v", err, werr)
	}
	if _, _, err := l.SyncedHead(); err == nil {
		t.Fatal("SyncedHead after the failed write succeeded")
	}
	if errs := got.get(); len(errs) != 1 || errs[0].Error() != werr.Error() {
		t.Fatalf("OnFailure reported %v, want once %v", errs, werr)
	}
	// Registered late, the callback still hears of the failure.
	var late failures
	l.OnFailure(late.add)
	if errs := late.get(); len(errs) != 1 {
		t.Fatalf("OnFailure registered after the failure reported %v", errs)
	}
	_ = l.Close()
	if n, err := Verify(path); err != nil || n != 1 {
		t.Fatalf("Verify = %d, %v; want the record written before the failure", n, err)
	}
}

// TestFsyncFailureIsSticky: a failed fsync stops the log like a failed write. Linux may drop the dirty pages and clear
// the error after reporting it once, so a later fsync would succeed over records that never reached the disk.
func TestFsyncFailureIsSticky(t *testing.T) {
	for _, tc := range []struct {
		name    string
		maxSize int64
		records int // appended before the failing Sync
	}{
		{"flush", 0, 1},
		{"before a rotation", 2 << 10, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			l, err := Open(path, Options{FlushInterval: time.Hour, MaxSize: tc.maxSize, Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			var got failures
			l.OnFailure(got.add)
			// The first record reaches the file; the rest (over MaxSize when rotating) wait in memory.
			if _, err := l.Append(sample(0)); err != nil {
				t.Fatal(err)
			}
			if err := l.Sync(); err != nil {
				t.Fatal(err)
			}
			for i := range tc.records {
				if _, err := l.Append(sample(i + 1)); err != nil {
					t.Fatal(err)
				}
			}
			var once sync.Once
			syncFile = func(f *os.File) error {
				failed := false
				once.Do(func() { failed = true })
				if failed {
					return &os.PathError{Op: "sync", Path: f.Name(), Err: syscall.EIO}
				}
				return f.Sync()
			}
			t.Cleanup(func() { syncFile = (*os.File).Sync })
			if err := l.Sync(); !errors.Is(err, syscall.EIO) {
				t.Fatalf("Sync = %v, want EIO", err)
			}
			// The disk "recovers": the next fsync would succeed, but the log must not carry on.
			if _, err := l.Append(sample(99)); !errors.Is(err, syscall.EIO) {
				t.Fatalf("Append after the failed fsync = %v, want the sticky EIO", err)
			}
			if _, _, err := l.SyncedHead(); !errors.Is(err, syscall.EIO) {
				t.Fatalf("SyncedHead after the failed fsync = %v; an anchor could name records that are not on disk", err)
			}
			if errs := got.get(); len(errs) != 1 || !errors.Is(errs[0], syscall.EIO) {
				t.Fatalf("OnFailure reported %v", errs)
			}
			_ = l.Close()
		})
	}
}
