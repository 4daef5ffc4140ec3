//go:build linux

// Package procexe reads the identity (device, inode) of the image a Linux process runs, through /proc/<pid>/exe. Two
// sides need the same answer: ipc records it when it accepts a connection and platform/linux reports it when it
// inspects the process; the broker compares them to catch a process that exec'd another program since it connected.
// It is its own small package because ipc is linked into agent-side clients, which must not pull in the daemon's
// platform code.
package procexe

import (
	"strconv"

	"golang.org/x/sys/unix"
)

// FileID is the device and inode of the file process pid runs. AT_STATX_DONT_SYNC answers from the inode the kernel
// already holds (the running image is pinned): a network or FUSE filesystem is not asked, so its server can neither
// stall the caller (ipc calls this in its accept loop) nor make the answer fail. An inode number of 0 is a valid
// answer (FUSE passes the server's through): callers must not read it as "unknown".
func FileID(pid int) (dev, ino uint64, err error) {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, "/proc/"+strconv.Itoa(pid)+"/exe", unix.AT_STATX_DONT_SYNC, unix.STATX_INO, &stx); err != nil {
		return 0, 0, err
	}
	return unix.Mkdev(stx.Dev_major, stx.Dev_minor), stx.Ino, nil
}
