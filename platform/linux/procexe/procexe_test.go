//go:build linux

package procexe

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// FileID names the same file a plain stat of the running executable does (device encoding included): ipc's record
// and the inspector's report are compared as numbers.
func TestFileIDIsTheRunningImage(t *testing.T) {
	dev, ino, err := FileID(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/exe", &st); err != nil {
		t.Fatal(err)
	}
	if dev != st.Dev || ino != st.Ino {
		t.Fatalf("FileID = %d:%d, stat = %d:%d", dev, ino, st.Dev, st.Ino)
	}
	if _, _, err := FileID(1 << 30); err == nil {
		t.Fatal("FileID of a pid that cannot exist succeeded")
	}
}

// Hold names the same file as FileID, and keeps it: while held, the inode number of a deleted image cannot be given
// to a new file (the reuse that would let a copy of a bound binary pass for the image a connection was accepted with).
func TestHoldKeepsTheImage(t *testing.T) {
	f, dev, ino, err := Hold(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d2, i2, err := FileID(os.Getpid())
	if err != nil || d2 != dev || i2 != ino {
		t.Fatalf("Hold = %d:%d, FileID = %d:%d (%v)", dev, ino, d2, i2, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Ino != ino || st.Nlink == 0 && st.Ino == 0 {
		t.Fatalf("the held file is not the image: %v %+v", err, st)
	}
}
