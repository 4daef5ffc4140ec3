package audit

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// rotatedPresent lists which of .1 … .max exist.
func rotatedPresent(t *testing.T, path string, max int) []int {
	t.Helper()
	var got []int
	for i := 1; i <= max; i++ {
		if _, err := os.Stat(segmentPath(path, i)); err == nil {
			got = append(got, i)
		} else if !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	return got
}

func linesIn(t *testing.T, path string) int {
	t.Helper()
	files, err := segments(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range files {
		n += countLines(t, f)
	}
	return n
}

// TestRotationInterruptedBetweenRenames: a crash part-way through shifting the rotated files leaves a hole in their
// numbering. What is there is still one chain, so it verifies, and the next rotation fills the hole.
func TestRotationInterruptedBetweenRenames(t *testing.T) {
	for _, tt := range []struct {
		name string
		done int // renames finished before the crash, oldest file first
		want []int
	}{
		{"before the live file moved", 2, []int{2, 3}},
		{"after the first rename", 1, []int{1, 3}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			rotatingLog(t, path, 100, 3)
			if err := os.Remove(segmentPath(path, 3)); err != nil {
				t.Fatal(err)
			}
			for i := 2; i > 2-tt.done; i-- {
				if err := os.Rename(segmentPath(path, i), segmentPath(path, i+1)); err != nil {
					t.Fatal(err)
				}
			}
			if got := rotatedPresent(t, path, 4); !slices.Equal(got, tt.want) {
				t.Fatalf("rotated files %v, want %v", got, tt.want)
			}
			want := linesIn(t, path)
			if n, err := Verify(path); err != nil || n != want {
				t.Fatalf("Verify = %d, %v; want %d lines", n, err, want)
			}

			seq, hash := rotatingLog(t, path, 50, 3)
			if got := rotatedPresent(t, path, 4); !slices.Equal(got, []int{1, 2, 3}) {
				t.Fatalf("after more rotations the rotated files are %v", got)
			}
			if n, err := VerifyAnchor(path, seq, hash); err != nil || n != linesIn(t, path) {
				t.Fatalf("VerifyAnchor after more rotations = %d, %v", n, err)
			}
		})
	}
}

// TestRotationRenameRefusedKeepsHistory: while the live file cannot be renamed (Windows, when a reader has it open),
// each write retries the rotation. The retries must neither delete the rotated files nor leave a state that fails
// verification, and rotation resumes once the rename works.
func TestRotationRenameRefusedKeepsHistory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	rotatingLog(t, path, 100, 3)
	// The first attempt deletes the oldest file, as any rotation does; the retries must not delete more.
	kept := countLines(t, segmentPath(path, 1)) + countLines(t, segmentPath(path, 2))

	refused := 0
	renameFile = func(from, to string) error {
		if from == path {
			refused++
			return &os.LinkError{Op: "rename", Old: from, New: to, Err: errors.New("sharing violation")}
		}
		return os.Rename(from, to)
	}
	t.Cleanup(func() { renameFile = os.Rename })
	seq, hash := rotatingLog(t, path, 100, 3)
	if refused < 5 {
		t.Fatalf("the live file's rename was tried %d times; the test needs several", refused)
	}
	if got := linesIn(t, path) - countLines(t, path); got != kept {
		t.Fatalf("rotated files hold %d lines after the refused rotations, want %d", got, kept)
	}
	if n, err := VerifyAnchor(path, seq, hash); err != nil || n != linesIn(t, path) {
		t.Fatalf("VerifyAnchor while rotation is refused = %d, %v", n, err)
	}

	renameFile = os.Rename
	seq, hash = rotatingLog(t, path, 100, 3)
	if got := rotatedPresent(t, path, 4); !slices.Equal(got, []int{1, 2, 3}) {
		t.Fatalf("after rotation resumed the rotated files are %v", got)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() > 4<<10 {
		t.Fatalf("the live file did not rotate once the rename worked: %v, %v", fi, err)
	}
	if n, err := VerifyAnchor(path, seq, hash); err != nil || n != linesIn(t, path) {
		t.Fatalf("VerifyAnchor after rotation resumed = %d, %v", n, err)
	}
}

// TestRotationHoleFromRemovedFileIsCaught: a hole in the numbering does not hide a file removed from the middle: the
// files on either side of it do not chain.
func TestRotationHoleFromRemovedFileIsCaught(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	rotatingLog(t, path, 100, 3)
	if err := os.Remove(segmentPath(path, 2)); err != nil {
		t.Fatal(err)
	}
	var le *LineError
	if _, err := Verify(path); !errors.As(err, &le) || le.File != segmentPath(path, 1) || le.Line != 1 {
		t.Fatalf("Verify = %v, want the chain broken at the start of %s", err, segmentPath(path, 1))
	}
}

// TestRotationKeepLowered: after audit_keep is lowered, the next rotation deletes every file beyond the new limit
// instead of leaving old ones behind a shifted, unchained neighbour.
func TestRotationKeepLowered(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	rotatingLog(t, path, 200, 5)
	if got := rotatedPresent(t, path, 6); !slices.Equal(got, []int{1, 2, 3, 4, 5}) {
		t.Fatalf("rotated files %v", got)
	}
	seq, hash := rotatingLog(t, path, 10, 2)
	if got := rotatedPresent(t, path, 6); !slices.Equal(got, []int{1, 2}) {
		t.Fatalf("after lowering Keep to 2 the rotated files are %v", got)
	}
	if n, err := VerifyAnchor(path, seq, hash); err != nil || n != linesIn(t, path) {
		t.Fatalf("VerifyAnchor = %d, %v", n, err)
	}
}
