//go:build linux

package ipc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/agentidd/agentidd/platform/linux/procexe"
)

const maxSunPath = maxSunPathLinux

// defaultPath is $XDG_RUNTIME_DIR/agentidd/agentidd.sock (a per-user
// tmpfs the login manager creates 0700), else a 0700 directory in the
// user's cache dir.
func defaultPath() (string, error) {
	var cands []string
	if rt := os.Getenv("XDG_RUNTIME_DIR"); rt != "" && filepath.IsAbs(rt) {
		cands = append(cands, filepath.Join(rt, "agentidd", "agentidd.sock"))
	}
	if cache, err := os.UserCacheDir(); err == nil {
		cands = append(cands, filepath.Join(cache, "agentidd", "run", "agentidd.sock"))
	}
	if len(cands) == 0 {
		return "", fmt.Errorf("ipc: neither XDG_RUNTIME_DIR nor a user cache dir is set; set %s", EnvSocket)
	}
	return fitSocketPath(cands, os.Geteuid(), maxSunPath), nil
}

// usePIDFD is cleared by tests to exercise the /proc fallback used on
// kernels before 6.5.
var usePIDFD = true

func peerOf(c net.Conn) (*PeerInfo, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("ipc: unexpected connection type %T", c)
	}
	var (
		cred     *unix.Ucred
		credErr  error
		pidfd          = -1
		pidfdErr error = unix.ENOPROTOOPT
	)
	err := rawControl(uc, func(fd int) {
		cred, credErr = unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
		if usePIDFD {
			pidfd, pidfdErr = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEERPIDFD)
		}
	})
	if err == nil {
		err = credErr
	}
	if err != nil {
		if pidfdErr == nil {
			_ = unix.Close(pidfd)
		}
		return nil, fmt.Errorf("ipc: SO_PEERCRED: %w", err)
	}
	if cred.Pid <= 0 {
		// A peer in a pid namespace we cannot see reports pid 0; without a
		// pid there is nothing to attest.
		if pidfdErr == nil {
			_ = unix.Close(pidfd)
		}
		return nil, fmt.Errorf("ipc: peer uid %d has no pid visible to the daemon", cred.Uid)
	}
	p := &PeerInfo{UID: int(cred.Uid), GID: int(cred.Gid), PID: int(cred.Pid)}
	switch {
	case pidfdErr == nil:
		p.live, p.StartTime, err = pidfdLiveness(pidfd, p.PID)
	case errors.Is(pidfdErr, unix.ENOPROTOOPT):
		// A kernel before 6.5 has no SO_PEERPIDFD: name the peer by pid and start time instead.
		p.live, p.StartTime, err = procLiveness(p.PID, p.UID)
	case errors.Is(pidfdErr, unix.ESRCH):
		// The peer was already reaped: its pid may name another process by now, so it must not be looked up.
		return nil, fmt.Errorf("ipc: SO_PEERPIDFD: %w", ErrPeerGone)
	default:
		return nil, fmt.Errorf("ipc: SO_PEERPIDFD: %w", pidfdErr)
	}
	if err != nil {
		return nil, err
	}
	// Read after the liveness handle exists and checked again through it: a pid reused in between cannot lend its exe.
	if hold, dev, ino, err := procexe.Hold(p.PID); err == nil && p.live.alive() == nil {
		p.ExeDev, p.ExeIno, p.ExeRecorded, p.exeHold = dev, ino, true, hold
	} else {
		if hold != nil {
			_ = hold.Close()
		}
		p.ExeUnread = true
	}
	return p, nil
}

// pidfdLive holds a pidfd; it turns readable when the process exits, and a
// pidfd always names the one process it was made for.
type pidfdLive struct{ f *os.File }

func pidfdLiveness(pidfd, pid int) (liveness, uint64, error) {
	l := &pidfdLive{f: os.NewFile(uintptr(pidfd), "pidfd:"+strconv.Itoa(pid))}
	// The start time is read by pid, then the pidfd is checked: if the
	// process was still alive after the read, the pid could not have been
	// reused, so the start time is this process's.
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		l.close()
		return nil, 0, fmt.Errorf("ipc: peer pid %d: %w: %w", pid, ErrPeerGone, err)
	}
	start, err := parseStatStart(b)
	if err != nil {
		l.close()
		return nil, 0, fmt.Errorf("ipc: peer pid %d: %w", pid, err)
	}
	if err := l.alive(); err != nil {
		l.close()
		return nil, 0, fmt.Errorf("ipc: peer pid %d: %w", pid, err)
	}
	return l, start, nil
}

func (l *pidfdLive) alive() error {
	var exited bool
	var pollErr error
	rc, err := l.f.SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			var n int
			for {
				n, pollErr = unix.Poll(fds, 0)
				if !errors.Is(pollErr, unix.EINTR) {
					break
				}
			}
			exited = n > 0 && fds[0].Revents != 0
		})
	}
	if err == nil {
		err = pollErr
	}
	if err != nil {
		return fmt.Errorf("%w: poll pidfd: %w", ErrPeerGone, err)
	}
	if exited {
		return ErrPeerGone
	}
	return nil
}

func (l *pidfdLive) close() { _ = l.f.Close() }

// procLive holds an open /proc/<pid> directory. Files read through it
// belong to the process it was opened for, or fail with ESRCH once that
// process is gone, even if the pid is reused; the start time comparison
// is a second, independent check.
type procLive struct {
	dir      *os.File // nil in tests using a fake reader
	readStat func() ([]byte, error)
	start    uint64
}

func procLiveness(pid, uid int) (liveness, uint64, error) {
	d, err := os.Open("/proc/" + strconv.Itoa(pid))
	if err != nil {
		return nil, 0, fmt.Errorf("ipc: peer pid %d: %w: %w", pid, ErrPeerGone, err)
	}
	l := &procLive{dir: d, readStat: func() ([]byte, error) { return readAt(d, "stat") }}
	// The pid came from SO_PEERCRED at connect time. If the peer died and
	// its pid was reused before we opened the directory, we would track the
	// wrong process; the uid check narrows that to a same-user process,
	// which attestation then has to pass on its own merits.
	status, err := readAt(d, "status")
	if err != nil {
		l.close()
		return nil, 0, fmt.Errorf("ipc: peer pid %d: %w: %w", pid, ErrPeerGone, err)
	}
	if got, err := parseStatusEUID(status); err != nil || got != uid {
		l.close()
		return nil, 0, fmt.Errorf("ipc: peer pid %d: %w: uid changed since connect", pid, ErrPeerGone)
	}
	b, err := l.readStat()
	if err != nil {
		l.close()
		return nil, 0, fmt.Errorf("ipc: peer pid %d: %w: %w", pid, ErrPeerGone, err)
	}
	if l.start, err = parseStatStart(b); err != nil {
		l.close()
		return nil, 0, fmt.Errorf("ipc: peer pid %d: %w", pid, err)
	}
	return l, l.start, nil
}

func (l *procLive) alive() error {
	b, err := l.readStat()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPeerGone, err)
	}
	start, err := parseStatStart(b)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPeerGone, err)
	}
	if start != l.start {
		return fmt.Errorf("%w: pid reused (start time %d, was %d)", ErrPeerGone, start, l.start)
	}
	return nil
}

func (l *procLive) close() {
	if l.dir != nil {
		_ = l.dir.Close()
	}
}

// readAt reads name relative to the open /proc/<pid> directory.
func readAt(dir *os.File, name string) ([]byte, error) {
	rc, err := dir.SyscallConn()
	if err != nil {
		return nil, err
	}
	var fd int
	var openErr error
	if err := rc.Control(func(dfd uintptr) {
		fd, openErr = unix.Openat(int(dfd), name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if openErr != nil {
		return nil, openErr
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 64<<10))
}

// parseStatStart returns field 22 (starttime) of /proc/<pid>/stat, counting
// from the last ')' because the command name may contain spaces and ')'.
func parseStatStart(b []byte) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 { // f[0] is field 3
		return 0, errors.New("malformed /proc stat: too few fields")
	}
	v, err := strconv.ParseUint(f[22-3], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("malformed /proc stat starttime: %w", err)
	}
	return v, nil
}

func parseStatusEUID(b []byte) (int, error) {
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			f := strings.Fields(rest)
			if len(f) < 2 {
				break
			}
			return strconv.Atoi(f[1])
		}
	}
	return 0, errors.New("malformed /proc status")
}

// peerIDs reads the other end's uid and pid (for clients: the server's).
func peerIDs(c *net.UnixConn) (uid, pid int, err error) {
	var cred *unix.Ucred
	var gerr error
	if err := rawControl(c, func(fd int) {
		cred, gerr = unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, 0, err
	}
	if gerr != nil {
		return 0, 0, fmt.Errorf("SO_PEERCRED: %w", gerr)
	}
	return int(cred.Uid), int(cred.Pid), nil
}
