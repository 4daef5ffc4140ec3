//go:build linux

// Package procexe reads the identity (device, inode) of the image a Linux process runs, through /proc/<pid>/exe. Two
// sides need the same answer: ipc records it when it accepts a connection and platform/linux reports it when it
// inspects the process; the broker compares them to catch a process that exec'd another program since it connected.
// It is its own small package because ipc is linked into agent-side clients, which must not pull in the daemon's
// platform code.
package procexe

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// fuseMagic is FUSE_SUPER_MAGIC: a FUSE server chooses the inode numbers its files report, so two different files can
// report the same one and an identity read there proves nothing.
const fuseMagic = 0x65735546

// ErrUnverifiable means the image sits where its identity cannot be trusted (FUSE).
var ErrUnverifiable = errors.New("the executable is on a FUSE filesystem, whose inode numbers its server chooses")

// Hold opens the image process pid runs (O_PATH: the filesystem's open is not called) and returns the open file with
// its identity. While the file stays open the inode stays allocated, so its number cannot be handed to a new file: a
// process that execs away from the image and writes a copy of a bound binary cannot make the copy look like the image
// it was accepted with. The caller closes it when the connection ends.
func Hold(pid int) (*os.File, uint64, uint64, error) {
	fd, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/exe", unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("opening the image of pid %d: %w", pid, err)
	}
	f := os.NewFile(uintptr(fd), "exe:"+strconv.Itoa(pid))
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		f.Close()
		return nil, 0, 0, fmt.Errorf("statfs of the image of pid %d: %w", pid, err)
	}
	if uint32(fs.Type) == fuseMagic {
		f.Close()
		return nil, 0, 0, ErrUnverifiable
	}
	dev, ino, err := identity(fd, "")
	if err != nil {
		f.Close()
		return nil, 0, 0, err
	}
	return f, dev, ino, nil
}

// FileID is the device and inode of the file process pid runs now.
func FileID(pid int) (dev, ino uint64, err error) {
	return identity(unix.AT_FDCWD, "/proc/"+strconv.Itoa(pid)+"/exe")
}

// identity reads dev and ino of path relative to dirfd (or of dirfd itself when path is ""). AT_STATX_DONT_SYNC
// answers from the inode the kernel already holds (the running image is pinned): a network filesystem is not asked,
// so its server can neither stall the caller (ipc calls this in its accept loop) nor make the answer fail. An inode
// number of 0 is a valid answer: callers must not read it as "unknown".
func identity(dirfd int, path string) (dev, ino uint64, err error) {
	flags := unix.AT_STATX_DONT_SYNC
	if path == "" {
		flags |= unix.AT_EMPTY_PATH
	}
	var stx unix.Statx_t
	err = unix.Statx(dirfd, path, flags, unix.STATX_INO, &stx)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		// No statx: a kernel before 4.11 (ENOSYS), or a seccomp profile that predates it (EPERM). fstatat answers the
		// same, only without the promise not to ask the filesystem. Failing instead would refuse every agent there.
		var st unix.Stat_t
		fl := 0
		if path == "" {
			fl = unix.AT_EMPTY_PATH
		}
		if err := unix.Fstatat(dirfd, path, &st, fl); err != nil {
			return 0, 0, err
		}
		return st.Dev, st.Ino, nil
	}
	if err != nil {
		return 0, 0, err
	}
	return unix.Mkdev(stx.Dev_major, stx.Dev_minor), stx.Ino, nil
}
