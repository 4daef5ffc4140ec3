//go:build linux

// Package procexe reads the identity (device, inode) of the image a Linux process runs, through /proc/<pid>/exe. Two
// sides need the same answer: ipc records it when it accepts a connection and platform/linux reports it when it
// inspects the process; the broker compares them to catch a process that exec'd another program since it connected.
// It is its own small package because ipc is linked into agent-side clients, which must not pull in the daemon's
// platform code.
package procexe

import (
	"errors"
	"strconv"

	"golang.org/x/sys/unix"
)

// FileID is the device and inode of the file process pid runs. AT_STATX_DONT_SYNC answers from the inode the kernel
// already holds (the running image is pinned): a network or FUSE filesystem is not asked, so its server can neither
// stall the caller (ipc calls this in its accept loop) nor make the answer fail. An inode number of 0 is a valid
// answer (FUSE passes the server's through): callers must not read it as "unknown".
func FileID(pid int) (dev, ino uint64, err error) {
	path := "/proc/" + strconv.Itoa(pid) + "/exe"
	var stx unix.Statx_t
	err = unix.Statx(unix.AT_FDCWD, path, unix.AT_STATX_DONT_SYNC, unix.STATX_INO, &stx)
	if errors.Is(err, unix.ENOSYS) {
		// A kernel before 4.11 has no statx: stat(2) answers the same, only without the promise not to ask the
		// filesystem. Failing instead would refuse every agent there.
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			return 0, 0, err
		}
		return st.Dev, st.Ino, nil
	}
	if err != nil {
		return 0, 0, err
	}
	return unix.Mkdev(stx.Dev_major, stx.Dev_minor), stx.Ino, nil
}
