//go:build linux || darwin

package ipc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

func listen(path string) (net.Listener, error) {
	if len(path) > maxSunPath {
		return nil, fmt.Errorf("ipc: socket path %s is %d bytes, over this OS's limit of %d; set %s to a shorter path", path, len(path), maxSunPath, EnvSocket)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ipc: create socket directory: %w", err)
	}
	if err := checkDir(dir, os.Geteuid()); err != nil {
		return nil, err
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("ipc: listen on %s: %w", path, err)
	}
	// bind creates the socket per the umask; the 0700 directory keeps
	// others out until the chmod lands.
	if err := os.Chmod(path, 0o600); err != nil {
		_ = ul.Close()
		return nil, fmt.Errorf("ipc: chmod socket: %w", err)
	}
	return &listener{Listener: ul, peerOf: peerOf}, nil
}

// checkDir refuses a socket directory another user could enter or swap
// things in: it must be a real directory (not a symlink), owned by uid,
// with no group or world bits.
func checkDir(dir string, uid int) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("ipc: socket directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("ipc: socket directory %s is not a directory (symlinks are refused)", dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("ipc: socket directory %s: no owner information", dir)
	}
	if int(st.Uid) != uid {
		return fmt.Errorf("ipc: socket directory %s is owned by uid %d, not %d; remove it or choose another path with %s", dir, st.Uid, uid, EnvSocket)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("ipc: socket directory %s has mode %#o; it must not be group or world accessible (chmod 700 it)", dir, perm)
	}
	return nil
}

// removeStale removes a socket left by a daemon that died. It dials first,
// as Tailscale's safesocket does: if something answers, a daemon is alive
// and we must not steal its path. Two daemons starting in the same instant
// can still both find the path dead; the loser's socket is then unlinked
// by the winner's bind (accepted: systemd/launchd start one instance).
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ipc: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("ipc: %s exists and is not a socket; refusing to remove it", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		pid := 0
		if uc, ok := c.(*net.UnixConn); ok {
			_, pid, _ = peerIDs(uc)
		}
		_ = c.Close()
		return &AlreadyRunningError{Path: path, PID: pid}
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("ipc: probe existing socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("ipc: remove stale socket: %w", err)
	}
	return nil
}

func dial(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("ipc: dial %s: %w", path, err)
	}
	// The client checks the server too: a socket at a path another user
	// could create first must not receive our requests (agent names, task
	// ids, justifications) or hand us tokens of its choosing.
	uid, _, err := peerIDs(c.(*net.UnixConn))
	if err == nil && uid != os.Geteuid() {
		err = fmt.Errorf("served by uid %d, not by this user (%d)", uid, os.Geteuid())
	}
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("ipc: dial %s: %w", path, err)
	}
	return c, nil
}

// daemonEUID is read once: the daemon never changes user, and every call is checked against it.
var daemonEUID = os.Geteuid()

func sameUserAsDaemon(p *PeerInfo) error {
	if p.UID != daemonEUID {
		return fmt.Errorf("peer uid %d is not the daemon's user", p.UID)
	}
	return nil
}

// finishPeer has nothing to do on Unix: the kernel recorded the peer's
// credentials at connect.
func finishPeer(*conn) error { return nil }

// rawControl runs fn with the connection's fd.
func rawControl(c *net.UnixConn, fn func(fd int)) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(func(fd uintptr) { fn(int(fd)) })
}
