package platform

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pathID is a portable stand-in for the per-OS FileID, so the cache logic
// is tested the same way on every OS: identity by name, change detection by
// mtime and size.
func pathID(f *os.File, _ os.FileInfo) (FileID, error) {
	var id FileID
	for _, c := range f.Name() {
		id.Ino = id.Ino*31 + uint64(c)
	}
	return id, nil
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestExeDigesterCachesAndNoticesChange(t *testing.T) {
	for _, tt := range []struct {
		name   string
		fileID func(*os.File, os.FileInfo) (FileID, error)
	}{
		{"with file id", pathID},
		{"without file id", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "agent")
			v1 := []byte("#!/bin/sh\necho v1\n")
			if err := os.WriteFile(path, v1, 0o755); err != nil {
				t.Fatal(err)
			}
			d := NewExeDigester(tt.fileID)
			hashes := 0
			d.onHash = func() { hashes++ }

			for range 3 {
				got, err := d.Digest(path)
				if err != nil {
					t.Fatal(err)
				}
				if got != sum(v1) {
					t.Fatalf("Digest = %s, want %s", got, sum(v1))
				}
			}
			if hashes != 1 {
				t.Fatalf("hashed %d times for 3 calls on an unchanged file, want 1", hashes)
			}

			// Same size, new content: only mtime tells them apart. Push mtime
			// forward explicitly so a coarse clock cannot hide the change.
			v2 := []byte("#!/bin/sh\necho v2\n")
			if err := os.WriteFile(path, v2, 0o755); err != nil {
				t.Fatal(err)
			}
			later := time.Now().Add(time.Minute)
			if err := os.Chtimes(path, later, later); err != nil {
				t.Fatal(err)
			}
			got, err := d.Digest(path)
			if err != nil {
				t.Fatal(err)
			}
			if got != sum(v2) {
				t.Fatalf("after change Digest = %s, want %s", got, sum(v2))
			}
			if hashes != 2 {
				t.Fatalf("hashed %d times, want 2 (the change must be re-hashed)", hashes)
			}
		})
	}
}

func TestExeDigesterRefuses(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, 100), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path, wantSub string
	}{
		{"too large", big, "larger than"},
		{"directory", dir, "not a regular file"},
		{"missing", filepath.Join(dir, "nope"), "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := NewExeDigester(nil)
			d.max = 99
			_, err := d.Digest(tt.path)
			if err == nil || !strings.Contains(err.Error(), tt.wantSub) {
				t.Fatalf("Digest(%s) = %v, want error containing %q", tt.name, err, tt.wantSub)
			}
		})
	}
}

func TestExeDigesterFileIDError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a")
	if err := os.WriteFile(path, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	d := NewExeDigester(func(*os.File, os.FileInfo) (FileID, error) { return FileID{}, boom })
	if _, err := d.Digest(path); !errors.Is(err, boom) {
		t.Fatalf("Digest = %v, want wrapped file-id error", err)
	}
}

func TestUnsupportedInspector(t *testing.T) {
	saved := newInspector
	t.Cleanup(func() { RegisterProcessInspector(saved) })
	RegisterProcessInspector(nil)
	ins := NewProcessInspector()
	if _, err := ins.Inspect(1); !errors.Is(err, ErrUnsupportedPlatform) {
		t.Errorf("Inspect = %v", err)
	}
	if _, err := ins.ExeDigest("/x"); !errors.Is(err, ErrUnsupportedPlatform) {
		t.Errorf("ExeDigest = %v", err)
	}
	if _, err := ins.Ancestors(1, 3); !errors.Is(err, ErrUnsupportedPlatform) {
		t.Errorf("Ancestors = %v", err)
	}
}
