//go:build darwin

package darwin

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/agentidd/agentidd/platform"
	"github.com/agentidd/agentidd/platform/darwin/pidpath"
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
	imageID, idErr := pathFileID(exe) // unread: the broker refuses a peer whose executable was recorded at accept
	return platform.Process{
		PID:        pid,
		PPID:       int(kp.Eproc.Ppid),
		UID:        int(kp.Eproc.Ucred.Uid),
		ExePath:    exe,
		ImageID:    imageID,
		HasImageID: idErr == nil,
		StartTime:  startTime(kp),
	}, nil
}

func pathFileID(path string) (platform.FileID, error) {
	dev, ino, err := pidpath.FileID(path)
	return platform.FileID{Dev: dev, Ino: ino}, err
}

// execPath is proc_pidpath(pid) (see package pidpath), with a vanished process reported as platform.ErrNoSuchProcess.
func execPath(pid int) (string, error) {
	exe, err := pidpath.Path(pid)
	if errors.Is(err, unix.ESRCH) {
		return "", fmt.Errorf("%w: %w", err, platform.ErrNoSuchProcess)
	}
	return exe, err
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
