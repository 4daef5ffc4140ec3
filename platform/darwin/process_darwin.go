//go:build darwin

package darwin

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/agentidd/agentidd/platform"
)

// This file is compile-checked only (no macOS runner); the hashing and
// caching it relies on are platform.ExeDigester, tested on Linux.

func init() {
	platform.RegisterProcessInspector(NewProcessInspector)
}

// ProcessInspector reads processes through sysctl (kern.proc.pid,
// kern.procargs2); proc_pidpath needs libproc via cgo, which the daemon
// avoids.
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

// execPath reads the exec path from kern.procargs2: an int32 argc, then
// the path given to execve, NUL-terminated. That path may be relative (it
// is what the caller passed); a relative path cannot be matched against a
// binding, so it is an error rather than a guess.
func execPath(pid int) (string, error) {
	b, err := unix.SysctlRaw("kern.procargs2", pid)
	if err != nil {
		return "", fmt.Errorf("sysctl kern.procargs2: %w", err)
	}
	return parseProcArgs2(b)
}

func parseProcArgs2(b []byte) (string, error) {
	if len(b) < 4 {
		return "", errors.New("kern.procargs2: short answer")
	}
	rest := b[4:] // skip argc
	i := bytes.IndexByte(rest, 0)
	if i <= 0 {
		return "", errors.New("kern.procargs2: no exec path")
	}
	path := string(rest[:i])
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("exec path %q is relative", path)
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
