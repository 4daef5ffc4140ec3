//go:build darwin

package darwin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/agentidd/agentidd/platform"
)

// This file is compile-checked only (no macOS runner); the hashing and
// caching it relies on are platform.ExeDigester, tested on Linux.

func init() {
	platform.RegisterProcessInspector(NewProcessInspector)
}

// ProcessInspector reads processes through sysctl (kern.proc.pid) and the
// proc_info syscall (proc_pidpath).
type ProcessInspector struct {
	digester *platform.ExeDigester
}

var _ platform.ProcessInspector = (*ProcessInspector)(nil)

// NewProcessInspector returns the sysctl-based inspector.
func NewProcessInspector() platform.ProcessInspector {
	return &ProcessInspector{digester: platform.NewExeDigester(fileID)}
}

func fileID(_ *os.File, fi os.FileInfo) (platform.FileID, error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return platform.FileID{}, errors.New("no stat data")
	}
	return platform.FileID{Dev: uint64(uint32(st.Dev)), Ino: st.Ino}, nil
}

func kinfo(pid int) (*unix.KinfoProc, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("pid %d: %w", pid, platform.ErrNoSuchProcess)
	}
	kp, err := unix.SysctlKinfoProc("kern.proc.pid", pid)
	if err != nil {
		// A missing pid yields a short (empty) answer, which x/sys reports
		// as EIO.
		if errors.Is(err, unix.EIO) || errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("pid %d: %w", pid, platform.ErrNoSuchProcess)
		}
		return nil, fmt.Errorf("pid %d: sysctl kern.proc.pid: %w", pid, err)
	}
	if int(kp.Proc.P_pid) != pid {
		return nil, fmt.Errorf("pid %d: %w", pid, platform.ErrNoSuchProcess)
	}
	return kp, nil
}

// startTime is µs since the epoch; ipc.PeerInfo.StartTime uses the same.
func startTime(kp *unix.KinfoProc) uint64 {
	tv := kp.Proc.P_starttime
	return uint64(tv.Sec)*1e6 + uint64(tv.Usec)
}

// Inspect implements platform.ProcessInspector.
func (p *ProcessInspector) Inspect(pid int) (platform.Process, error) {
	kp, err := kinfo(pid)
	if err != nil {
		return platform.Process{}, fmt.Errorf("inspect %w", err)
	}
	exe, err := execPath(pid)
	if err != nil {
		return platform.Process{}, fmt.Errorf("inspect pid %d: %w", pid, err)
	}
	// As on Linux: a pid reused while we read would show a new start time.
	kp2, err := kinfo(pid)
	if err != nil {
		return platform.Process{}, fmt.Errorf("inspect %w", err)
	}
	if startTime(kp2) != startTime(kp) {
		return platform.Process{}, fmt.Errorf("inspect pid %d: process changed while being read: %w", pid, platform.ErrNoSuchProcess)
	}
	return platform.Process{
		PID:       pid,
		PPID:      int(kp.Eproc.Ppid),
		UID:       int(kp.Eproc.Ucred.Uid),
		ExePath:   exe,
		StartTime: startTime(kp),
	}, nil
}

// proc_info(2) selectors for proc_pidpath: PROC_INFO_CALL_PIDINFO with the PROC_PIDPATHINFO flavor, and the buffer
// size libproc documents for it (PROC_PIDPATHINFO_MAXSIZE).
const (
	procInfoCallPIDInfo = 2
	procPIDPathInfo     = 11
	procPIDPathMaxSize  = 4 * 1024
)

// execPath is proc_pidpath(pid): the path of the vnode the process runs, from the kernel. kern.procargs2 is not an
// option: its exec path is a copy on the process's own stack, which the process can overwrite with any path it likes
// (say, a bound agent's or agentidd's own) before it connects. libproc's wrapper needs cgo, which the daemon avoids;
// the proc_info syscall is what it calls.
func execPath(pid int) (string, error) {
	buf := make([]byte, procPIDPathMaxSize)
	//lint:ignore SA1019 libSystem's proc_pidpath wrapper needs cgo; x/sys routes this through libSystem's syscall(2).
	n, _, errno := unix.Syscall6(unix.SYS_PROC_INFO, procInfoCallPIDInfo, uintptr(pid), procPIDPathInfo, 0,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
	runtime.KeepAlive(buf)
	if errno != 0 {
		if errno == unix.ESRCH {
			return "", fmt.Errorf("proc_pidpath: %w", platform.ErrNoSuchProcess)
		}
		return "", fmt.Errorf("proc_pidpath: %w", errno)
	}
	return parsePIDPath(buf, int(n))
}

// parsePIDPath takes proc_pidpath's answer: n bytes of buf, the path NUL-terminated or not.
func parsePIDPath(buf []byte, n int) (string, error) {
	if n <= 0 || n > len(buf) {
		return "", fmt.Errorf("proc_pidpath: answer of %d bytes", n)
	}
	path := string(buf[:n])
	if i := strings.IndexByte(path, 0); i >= 0 {
		path = path[:i]
	}
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("proc_pidpath: %q is not an absolute path", path)
	}
	return filepath.Clean(path), nil
}

// ExeDigest implements platform.ProcessInspector.
func (p *ProcessInspector) ExeDigest(path string) (string, error) {
	return p.digester.Digest(path)
}

// Ancestors implements platform.ProcessInspector.
func (p *ProcessInspector) Ancestors(pid int, max int) ([]int, error) {
	var out []int
	for len(out) < max {
		kp, err := kinfo(pid)
		if err != nil {
			return out, fmt.Errorf("ancestors: %w", err)
		}
		ppid := int(kp.Eproc.Ppid)
		if ppid <= 0 || ppid == pid {
			break
		}
		out = append(out, ppid)
		pid = ppid
	}
	return out, nil
}
