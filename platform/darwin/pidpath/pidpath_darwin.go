//go:build darwin

package pidpath

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file is compile-checked only (no macOS runner); parse, which it relies on, is tested on every OS.

// proc_info(2) selectors for proc_pidpath: PROC_INFO_CALL_PIDINFO with the PROC_PIDPATHINFO flavor, and the buffer
// size libproc documents for it (PROC_PIDPATHINFO_MAXSIZE).
const (
	procInfoCallPIDInfo = 2
	procPIDPathInfo     = 11
	procPIDPathMaxSize  = 4 * 1024
)

// Path is proc_pidpath(pid): the path of the vnode the process runs, from the kernel. kern.procargs2 is not an
// option: its exec path is a copy on the process's own stack, which the process can overwrite with any path it likes
// (say, a bound agent's or agentidd's own) before it connects. libproc's wrapper needs cgo, which the daemon avoids;
// the proc_info syscall is what it calls. A vanished process is an error wrapping unix.ESRCH.
func Path(pid int) (string, error) {
	buf := make([]byte, procPIDPathMaxSize)
	//lint:ignore SA1019 libSystem's proc_pidpath wrapper needs cgo; x/sys routes this through libSystem's syscall(2).
	n, _, errno := unix.Syscall6(unix.SYS_PROC_INFO, procInfoCallPIDInfo, uintptr(pid), procPIDPathInfo, 0,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
	runtime.KeepAlive(buf)
	if errno != 0 {
		return "", fmt.Errorf("proc_pidpath: %w", errno)
	}
	return parse(buf, int(n))
}

// FileID is the device and inode of the file at path. macOS has no handle on a running image like Linux's
// /proc/<pid>/exe, so a file replaced at the path reads as another program: an agent whose binary was upgraded under
// it has to reconnect, the safe side.
func FileID(path string) (dev, ino uint64, err error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return uint64(uint32(st.Dev)), st.Ino, nil
}
