//go:build windows

package windows

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/windows"

	"github.com/agentidd/agentidd/platform"
)

// This file is compile-checked only (no Windows runner); hashing and its
// cache are platform.ExeDigester, tested on Linux.

func init() {
	platform.RegisterProcessInspector(NewProcessInspector)
}

// ProcessInspector uses QueryFullProcessImageName, GetProcessTimes and a
// Toolhelp snapshot for parents.
type ProcessInspector struct {
	digester *platform.ExeDigester
}

var _ platform.ProcessInspector = (*ProcessInspector)(nil)

// NewProcessInspector returns the Win32 inspector.
func NewProcessInspector() platform.ProcessInspector {
	return &ProcessInspector{digester: platform.NewExeDigester(fileID)}
}

func fileID(f *os.File, _ os.FileInfo) (platform.FileID, error) {
	var info windows.ByHandleFileInformation
	if err := windows.GetFileInformationByHandle(windows.Handle(f.Fd()), &info); err != nil {
		return platform.FileID{}, fmt.Errorf("GetFileInformationByHandle: %w", err)
	}
	return platform.FileID{
		Dev: uint64(info.VolumeSerialNumber),
		Ino: uint64(info.FileIndexHigh)<<32 | uint64(info.FileIndexLow),
	}, nil
}

func openProcess(pid int) (windows.Handle, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("pid %d: %w", pid, platform.ErrNoSuchProcess)
	}
	h, err := windows.OpenProcess(windows.PROCESS_QUERY_LIMITED_INFORMATION, false, uint32(pid))
	if err != nil {
		if errors.Is(err, windows.ERROR_INVALID_PARAMETER) {
			return 0, fmt.Errorf("pid %d: %w", pid, platform.ErrNoSuchProcess)
		}
		return 0, fmt.Errorf("pid %d: OpenProcess: %w", pid, err)
	}
	return h, nil
}

// creationTime is the FILETIME of process creation as one number; the
// StartTime unit on Windows, shared with ipc.PeerInfo.
func creationTime(h windows.Handle) (uint64, error) {
	var created, exited, kernel, user windows.Filetime
	if err := windows.GetProcessTimes(h, &created, &exited, &kernel, &user); err != nil {
		return 0, fmt.Errorf("GetProcessTimes: %w", err)
	}
	return uint64(created.HighDateTime)<<32 | uint64(created.LowDateTime), nil
}

// Inspect implements platform.ProcessInspector. UID is -1: Windows
// identities are SIDs, which ipc.PeerInfo carries.
func (p *ProcessInspector) Inspect(pid int) (platform.Process, error) {
	h, err := openProcess(pid)
	if err != nil {
		return platform.Process{}, fmt.Errorf("inspect %w", err)
	}
	// The open handle pins the process object, so everything read through
	// it belongs to one process even if it exits meanwhile.
	defer windows.CloseHandle(h)
	start, err := creationTime(h)
	if err != nil {
		return platform.Process{}, fmt.Errorf("inspect pid %d: %w", pid, err)
	}
	buf := make([]uint16, windows.MAX_LONG_PATH)
	n := uint32(len(buf))
	if err := windows.QueryFullProcessImageName(h, 0, &buf[0], &n); err != nil {
		return platform.Process{}, fmt.Errorf("inspect pid %d: QueryFullProcessImageName: %w", pid, err)
	}
	parents, err := parentTable()
	if err != nil {
		return platform.Process{}, fmt.Errorf("inspect pid %d: %w", pid, err)
	}
	return platform.Process{
		PID:       pid,
		PPID:      parents[pid],
		UID:       -1,
		ExePath:   windows.UTF16ToString(buf[:n]),
		StartTime: start,
	}, nil
}

// parentTable maps pid to parent pid from one Toolhelp snapshot.
func parentTable() (map[int]int, error) {
	snap, err := windows.CreateToolhelp32Snapshot(windows.TH32CS_SNAPPROCESS, 0)
	if err != nil {
		return nil, fmt.Errorf("CreateToolhelp32Snapshot: %w", err)
	}
	defer windows.CloseHandle(snap)
	out := map[int]int{}
	var e windows.ProcessEntry32
	e.Size = uint32(unsafe.Sizeof(e))
	for err = windows.Process32First(snap, &e); err == nil; err = windows.Process32Next(snap, &e) {
		out[int(e.ProcessID)] = int(e.ParentProcessID)
	}
	if !errors.Is(err, windows.ERROR_NO_MORE_FILES) {
		return nil, fmt.Errorf("Process32Next: %w", err)
	}
	return out, nil
}

// ExeDigest implements platform.ProcessInspector.
func (p *ProcessInspector) ExeDigest(path string) (string, error) {
	return p.digester.Digest(path)
}

// Ancestors implements platform.ProcessInspector. Windows does not
// reparent orphans: a recorded parent pid may since have been reused by a
// newer process. A "parent" created after its child is therefore not the
// parent, and the walk stops there (fail closed).
func (p *ProcessInspector) Ancestors(pid int, max int) ([]int, error) {
	parents, err := parentTable()
	if err != nil {
		return nil, fmt.Errorf("ancestors of pid %d: %w", pid, err)
	}
	childStart, err := startOf(pid)
	if err != nil {
		return nil, fmt.Errorf("ancestors of %w", err)
	}
	var out []int
	for len(out) < max {
		ppid, ok := parents[pid]
		if !ok || ppid <= 0 || ppid == pid {
			break
		}
		ps, err := startOf(ppid)
		if err != nil || ps > childStart {
			break
		}
		out = append(out, ppid)
		pid, childStart = ppid, ps
	}
	return out, nil
}

func startOf(pid int) (uint64, error) {
	h, err := openProcess(pid)
	if err != nil {
		return 0, err
	}
	defer windows.CloseHandle(h)
	return creationTime(h)
}
