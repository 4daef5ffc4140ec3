//go:build linux

package linux

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/agentidd/agentidd/platform"
	"github.com/agentidd/agentidd/platform/linux/procexe"
)

func init() {
	platform.RegisterProcessInspector(NewProcessInspector)
}

// ProcessInspector reads /proc. procRoot is a seam for tests.
type ProcessInspector struct {
	procRoot string
	digester *platform.ExeDigester
}

var _ platform.ProcessInspector = (*ProcessInspector)(nil)

// NewProcessInspector returns the /proc-based inspector.
func NewProcessInspector() platform.ProcessInspector {
	return newProcessInspector("/proc")
}

func newProcessInspector(procRoot string) *ProcessInspector {
	return &ProcessInspector{procRoot: procRoot, digester: platform.NewExeDigester(fileID)}
}

func fileID(_ *os.File, fi os.FileInfo) (platform.FileID, error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return platform.FileID{}, errors.New("no stat data")
	}
	return platform.FileID{Dev: st.Dev, Ino: st.Ino}, nil
}

// Inspect returns pid's parent, effective uid, executable and start time
// (clock ticks since boot).
func (p *ProcessInspector) Inspect(pid int) (platform.Process, error) {
	if pid <= 0 {
		return platform.Process{}, fmt.Errorf("inspect pid %d: %w", pid, platform.ErrNoSuchProcess)
	}
	dir := filepath.Join(p.procRoot, strconv.Itoa(pid))
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return platform.Process{}, procErr(pid, err)
	}
	ppid, start, err := parseStat(stat)
	if err != nil {
		return platform.Process{}, fmt.Errorf("inspect pid %d: %w", pid, err)
	}
	status, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return platform.Process{}, procErr(pid, err)
	}
	uid, err := parseStatusUID(status)
	if err != nil {
		return platform.Process{}, fmt.Errorf("inspect pid %d: %w", pid, err)
	}
	// Kernel threads have no exe; other users' processes give EACCES unless
	// we are root. Either way attestation has nothing to match, so it is an
	// error rather than an empty path.
	image := filepath.Join(dir, "exe")
	var imageID platform.FileID
	dev, ino, idErr := procexe.FileID(pid) // the same reading ipc records at accept
	if idErr == nil {
		imageID = platform.FileID{Dev: dev, Ino: ino}
	}
	exe, err := os.Readlink(image)
	if err != nil {
		return platform.Process{}, procErr(pid, err)
	}
	// Read stat again: if the pid was reused while we read exe and status,
	// the start time changed and what we read may belong to two processes.
	if stat2, err := os.ReadFile(filepath.Join(dir, "stat")); err != nil {
		return platform.Process{}, procErr(pid, err)
	} else if _, start2, err := parseStat(stat2); err != nil || start2 != start {
		return platform.Process{}, fmt.Errorf("inspect pid %d: process changed while being read: %w", pid, platform.ErrNoSuchProcess)
	}
	return platform.Process{PID: pid, PPID: ppid, UID: uid, ExePath: exe, Image: image, ImageID: imageID, HasImageID: idErr == nil,
		StartTime: start}, nil
}

// ExeDigest returns the cached hex SHA-256 of the file at path.
func (p *ProcessInspector) ExeDigest(path string) (string, error) {
	return p.digester.Digest(path)
}

// Ancestors returns pid's parent chain, nearest first, at most max long.
func (p *ProcessInspector) Ancestors(pid int, max int) ([]int, error) {
	var out []int
	for len(out) < max {
		stat, err := os.ReadFile(filepath.Join(p.procRoot, strconv.Itoa(pid), "stat"))
		if err != nil {
			return out, procErr(pid, err)
		}
		ppid, _, err := parseStat(stat)
		if err != nil {
			return out, fmt.Errorf("ancestors of pid %d: %w", pid, err)
		}
		if ppid <= 0 {
			break
		}
		out = append(out, ppid)
		pid = ppid
	}
	return out, nil
}

func procErr(pid int, err error) error {
	// ESRCH comes from reading files of a process that died after its
	// directory was opened.
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("inspect pid %d: %w", pid, platform.ErrNoSuchProcess)
	}
	return fmt.Errorf("inspect pid %d: %w", pid, err)
}

// parseStat extracts ppid (field 4) and starttime (field 22, clock ticks
// since boot) from /proc/<pid>/stat. The command name (field 2) is in
// parentheses and may itself contain spaces and ')', so fields are counted
// from the last ')'.
func parseStat(b []byte) (ppid int, startTime uint64, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, errors.New("malformed /proc stat: no command name")
	}
	fields := strings.Fields(string(b[i+1:]))
	// fields[0] is field 3 (state), so field N is fields[N-3].
	if len(fields) < 22-3+1 {
		return 0, 0, errors.New("malformed /proc stat: too few fields")
	}
	ppid, err = strconv.Atoi(fields[4-3])
	if err != nil {
		return 0, 0, fmt.Errorf("malformed /proc stat ppid: %w", err)
	}
	startTime, err = strconv.ParseUint(fields[22-3], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("malformed /proc stat starttime: %w", err)
	}
	return ppid, startTime, nil
}

// parseStatusUID returns the effective uid from /proc/<pid>/status: the
// one the kernel checks permissions with, and the one SO_PEERCRED reports.
func parseStatusUID(b []byte) (int, error) {
	for line := range strings.SplitSeq(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Uid:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 2 {
			break
		}
		uid, err := strconv.Atoi(f[1])
		if err != nil {
			return 0, fmt.Errorf("malformed /proc status Uid: %w", err)
		}
		return uid, nil
	}
	return 0, errors.New("malformed /proc status: no Uid line")
}
