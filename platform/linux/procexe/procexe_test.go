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
