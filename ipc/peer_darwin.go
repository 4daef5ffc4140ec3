//go:build darwin

package ipc

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/agentidd/agentidd/platform/darwin/pidpath"
)

// This file is compile-checked only (CI has no macOS runner); the logic it
// shares with Linux (listen_unix.go, fitSocketPath) is tested there.

const maxSunPath = maxSunPathDarwin

// defaultPath prefers ~/Library/Application Support/agentidd (per user,
// 0700 home), then $TMPDIR (a per-user 0700 dir under /var/folders); if
// neither fits sun_path, fitSocketPath picks a hashed path under /tmp.
func defaultPath() (string, error) {
	var cands []string
	if home, err := os.UserHomeDir(); err == nil {
		cands = append(cands, filepath.Join(home, "Library", "Application Support", "agentidd", "agentidd.sock"))
	}
	if tmp := os.Getenv("TMPDIR"); tmp != "" && filepath.IsAbs(tmp) {
		cands = append(cands, filepath.Join(tmp, "agentidd", "agentidd.sock"))
	}
	return fitSocketPath(cands, os.Geteuid(), maxSunPath), nil
}

// peerOf reads LOCAL_PEERCRED (uid, groups), which the kernel records at
// connect, and LOCAL_PEERPID, which is the last process to have used the
// peer socket (xnu's last_pid): read at accept, that is the connecting
// process unless it handed the socket on first. The pid and its start time
// then name the peer; a process that execs another program keeps both, so
// the executable's file identity is recorded too (ExeDev, ExeIno) for the
// broker to compare at each attestation.
func peerOf(c net.Conn) (*PeerInfo, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("ipc: unexpected connection type %T", c)
	}
	var (
		xu             *unix.Xucred
		pid            int
		credErr, pidEr error
	)
	if err := rawControl(uc, func(fd int) {
		xu, credErr = unix.GetsockoptXucred(fd, unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
		pid, pidEr = unix.GetsockoptInt(fd, unix.SOL_LOCAL, unix.LOCAL_PEERPID)
	}); err != nil {
		return nil, fmt.Errorf("ipc: peer credentials: %w", err)
	}
	if credErr != nil {
		return nil, fmt.Errorf("ipc: LOCAL_PEERCRED: %w", credErr)
	}
	if pidEr != nil {
		return nil, fmt.Errorf("ipc: LOCAL_PEERPID: %w", pidEr)
	}
	if pid <= 0 {
		return nil, fmt.Errorf("ipc: peer uid %d has no pid", xu.Uid)
	}
	gid := -1
	if xu.Ngroups > 0 {
		gid = int(xu.Groups[0])
	}
	start, uid, err := darwinProc(pid)
	if err != nil {
		return nil, fmt.Errorf("ipc: peer pid %d: %w: %w", pid, ErrPeerGone, err)
	}
	// The pid could have been reused between connect and the sysctl; a
	// different owner gives that away.
	if uid != int(xu.Uid) {
		return nil, fmt.Errorf("ipc: peer pid %d: %w: owner changed since connect", pid, ErrPeerGone)
	}
	p := &PeerInfo{
		UID: int(xu.Uid), GID: gid, PID: pid, StartTime: start,
		live: &startTimeLive{pid: pid, start: start, read: func(pid int) (uint64, error) {
			s, _, err := darwinProc(pid)
			return s, err
		}},
	}
	// Read after the start time and checked against it again: a pid reused in between cannot lend its executable.
	p.ExeUnread = true
	if exe, err := pidpath.Path(pid); err == nil {
		if dev, ino, err := pidpath.FileID(exe); err == nil && p.live.alive() == nil {
			p.ExeDev, p.ExeIno, p.ExeRecorded, p.ExeUnread = dev, ino, true, false
		}
	}
	return p, nil
}

// darwinProc returns the start time (µs since the epoch, the unit
// platform/darwin uses) and effective uid of pid.
func darwinProc(pid int) (start uint64, uid int, err error) {
	kp, err := unix.SysctlKinfoProc("kern.proc.pid", pid)
	if err != nil {
		return 0, 0, fmt.Errorf("sysctl kern.proc.pid: %w", err)
	}
	if int(kp.Proc.P_pid) != pid {
		return 0, 0, fmt.Errorf("sysctl kern.proc.pid: no process %d", pid)
	}
	tv := kp.Proc.P_starttime
	return uint64(tv.Sec)*1e6 + uint64(tv.Usec), int(kp.Eproc.Ucred.Uid), nil
}

// peerIDs reads the other end's uid and pid (for clients: the server's).
func peerIDs(c *net.UnixConn) (uid, pid int, err error) {
	var xu *unix.Xucred
	var credErr, pidErr error
	if err := rawControl(c, func(fd int) {
		xu, credErr = unix.GetsockoptXucred(fd, unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
		pid, pidErr = unix.GetsockoptInt(fd, unix.SOL_LOCAL, unix.LOCAL_PEERPID)
	}); err != nil {
		return 0, 0, err
	}
	if credErr != nil {
		return 0, 0, fmt.Errorf("LOCAL_PEERCRED: %w", credErr)
	}
	if pidErr != nil {
		return 0, 0, fmt.Errorf("LOCAL_PEERPID: %w", pidErr)
	}
	return int(xu.Uid), pid, nil
}
