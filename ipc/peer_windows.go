//go:build windows

package ipc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/Microsoft/go-winio"
	"golang.org/x/sys/windows"
)

// This file is compile-checked only (CI has no Windows runner). Its pure
// parts (pipeName, pipeSDDL) and the handshake replay (conn.pending) are
// tested on Linux.

// currentSID is the daemon's user: the pipe's name, its DACL and the
// guard's comparison all use it.
var currentSID = sync.OnceValues(func() (string, error) {
	u, err := windows.GetCurrentProcessToken().GetTokenUser()
	if err != nil {
		return "", fmt.Errorf("ipc: GetTokenUser: %w", err)
	}
	return u.User.Sid.String(), nil
})

func defaultPath() (string, error) {
	sid, err := currentSID()
	if err != nil {
		return "", err
	}
	return pipeName(sid), nil
}

func listen(path string) (net.Listener, error) {
	sid, err := currentSID()
	if err != nil {
		return nil, err
	}
	sddl, err := pipeSDDL(sid)
	if err != nil {
		return nil, err
	}
	// go-winio creates the first instance with FILE_CREATE, which is what
	// FILE_FLAG_FIRST_PIPE_INSTANCE asks for: it fails if any instance of
	// the name exists. So a squatter who created the pipe first (with a
	// DACL of their choosing) makes us fail here instead of joining their
	// pipe. It also rejects remote (SMB) clients.
	ln, err := winio.ListenPipe(path, &winio.PipeConfig{
		SecurityDescriptor: sddl,
		InputBufferSize:    64 << 10,
		OutputBufferSize:   64 << 10,
	})
	if err != nil {
		if perr := probeExisting(path, sid); perr != nil {
			return nil, perr
		}
		return nil, fmt.Errorf("ipc: create pipe %s: %w", path, err)
	}
	return &listener{Listener: ln, peerOf: peerOf}, nil
}

// probeExisting explains why the pipe could not be created: our own daemon
// is running (AlreadyRunningError), or someone else owns the name (a fatal
// error; we must not serve the user's tokens next to a squatter). nil
// means no pipe answered.
func probeExisting(path, sid string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := dialPipe(ctx, path)
	if err != nil {
		if errors.Is(err, windows.ERROR_ACCESS_DENIED) {
			return fmt.Errorf("ipc: pipe %s already exists and this user may not open it: another user's process holds the name; refusing to start", path)
		}
		return nil
	}
	defer c.Close()
	h, err := pipeHandle(c)
	if err != nil {
		return fmt.Errorf("ipc: pipe %s already exists: %w", path, err)
	}
	var pid uint32
	if err := windows.GetNamedPipeServerProcessId(h, &pid); err != nil {
		return fmt.Errorf("ipc: pipe %s already exists: GetNamedPipeServerProcessId: %w", path, err)
	}
	owner, err := processSID(pid)
	if err != nil || owner != sid {
		return fmt.Errorf("ipc: pipe %s already exists and is served by pid %d, which is not this user's; refusing to start", path, pid)
	}
	return &AlreadyRunningError{Path: path, PID: int(pid)}
}

func dial(ctx context.Context, path string) (net.Conn, error) {
	c, err := dialPipe(ctx, path)
	if err != nil {
		return nil, err
	}
	// The client checks the server too: a pipe another user created
	// first must not receive our requests or hand us tokens.
	if err := checkServer(c); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("ipc: dial %s: %w", path, err)
	}
	return c, nil
}

func dialPipe(ctx context.Context, path string) (net.Conn, error) {
	// Identification level lets the daemon read our token (who we are)
	// but not act as us.
	c, err := winio.DialPipeAccessImpLevel(ctx, path, windows.GENERIC_READ|windows.GENERIC_WRITE, winio.PipeImpLevelIdentification)
	if err != nil {
		return nil, fmt.Errorf("ipc: dial %s: %w", path, err)
	}
	return c, nil
}

func checkServer(c net.Conn) error {
	sid, err := currentSID()
	if err != nil {
		return err
	}
	h, err := pipeHandle(c)
	if err != nil {
		return err
	}
	var pid uint32
	if err := windows.GetNamedPipeServerProcessId(h, &pid); err != nil {
		return fmt.Errorf("GetNamedPipeServerProcessId: %w", err)
	}
	owner, err := processSID(pid)
	if err != nil {
		return fmt.Errorf("cannot read the owner of server pid %d: %w", pid, err)
	}
	if owner != sid {
		return fmt.Errorf("served by %s (pid %d), not by this user", owner, pid)
	}
	return nil
}

func pipeHandle(c net.Conn) (windows.Handle, error) {
	f, ok := c.(interface{ Fd() uintptr })
	if !ok {
		return 0, fmt.Errorf("unexpected connection type %T", c)
	}
	return windows.Handle(f.Fd()), nil
}

// peerOf takes the client pid and a handle on its process at accept. The
// SID comes later, in finishPeer: impersonation needs data from the client
// first, and waiting for it here would stall the accept loop.
func peerOf(c net.Conn) (*PeerInfo, error) {
	h, err := pipeHandle(c)
	if err != nil {
		return nil, fmt.Errorf("ipc: %w", err)
	}
	var pid uint32
	if err := windows.GetNamedPipeClientProcessId(h, &pid); err != nil {
		return nil, fmt.Errorf("ipc: GetNamedPipeClientProcessId: %w", err)
	}
	// Remote clients are rejected by the pipe, so the pid is a local one
	// (SPIRE guards against a fake pid from SMB clients; we cannot get one).
	ph, err := windows.OpenProcess(windows.SYNCHRONIZE|windows.PROCESS_QUERY_LIMITED_INFORMATION, false, pid)
	if err != nil {
		return nil, fmt.Errorf("ipc: OpenProcess(%d): %w: %w", pid, ErrPeerGone, err)
	}
	var created, exited, kernel, user windows.Filetime
	if err := windows.GetProcessTimes(ph, &created, &exited, &kernel, &user); err != nil {
		_ = windows.CloseHandle(ph)
		return nil, fmt.Errorf("ipc: GetProcessTimes(%d): %w", pid, err)
	}
	l := &handleLive{h: ph}
	if err := l.alive(); err != nil {
		l.close()
		return nil, fmt.Errorf("ipc: peer pid %d: %w", pid, err)
	}
	return &PeerInfo{
		UID: -1, GID: -1, PID: int(pid),
		StartTime: uint64(created.HighDateTime)<<32 | uint64(created.LowDateTime),
		live:      l,
	}, nil
}

// finishPeer reads the client's first bytes (gRPC's preface, sent at
// once), then impersonates the client to read its token's SID: the
// identity the kernel vouches for, unlike the pid. The bytes are replayed.
func finishPeer(c *conn) error {
	_ = c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	n, err := c.Conn.Read(buf)
	_ = c.Conn.SetReadDeadline(time.Time{})
	if n == 0 {
		return fmt.Errorf("ipc: client sent nothing before impersonation: %w", err)
	}
	c.pending = buf[:n]
	h, err := pipeHandle(c.Conn)
	if err != nil {
		return fmt.Errorf("ipc: %w", err)
	}
	sid, err := clientSID(h)
	if err != nil {
		return err
	}
	c.peer.SID = sid
	return nil
}

var procImpersonateNamedPipeClient = windows.NewLazySystemDLL("advapi32.dll").NewProc("ImpersonateNamedPipeClient")

func clientSID(h windows.Handle) (string, error) {
	// Impersonation applies to the OS thread; keep this goroutine on it
	// until we have reverted.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if r, _, e := procImpersonateNamedPipeClient.Call(uintptr(h)); r == 0 {
		return "", fmt.Errorf("ipc: ImpersonateNamedPipeClient: %w", e)
	}
	defer func() {
		// Carrying on as the client on a daemon thread would be worse
		// than crashing (Tailscale's pipe_windows.go does the same).
		if err := windows.RevertToSelf(); err != nil {
			panic(fmt.Sprintf("ipc: RevertToSelf: %v", err))
		}
	}()
	var tok windows.Token
	if err := windows.OpenThreadToken(windows.CurrentThread(), windows.TOKEN_QUERY, true, &tok); err != nil {
		return "", fmt.Errorf("ipc: OpenThreadToken: %w", err)
	}
	defer tok.Close()
	u, err := tok.GetTokenUser()
	if err != nil {
		return "", fmt.Errorf("ipc: GetTokenUser: %w", err)
	}
	return u.User.Sid.String(), nil
}

func processSID(pid uint32) (string, error) {
	ph, err := windows.OpenProcess(windows.PROCESS_QUERY_LIMITED_INFORMATION, false, pid)
	if err != nil {
		return "", err
	}
	defer windows.CloseHandle(ph)
	var tok windows.Token
	if err := windows.OpenProcessToken(ph, windows.TOKEN_QUERY, &tok); err != nil {
		return "", err
	}
	defer tok.Close()
	u, err := tok.GetTokenUser()
	if err != nil {
		return "", err
	}
	return u.User.Sid.String(), nil
}

// handleLive holds a process handle: it keeps the process object (and so
// its pid) from being reused, and is signalled when the process exits.
type handleLive struct{ h windows.Handle }

func (l *handleLive) alive() error {
	ev, err := windows.WaitForSingleObject(l.h, 0)
	if err != nil {
		return fmt.Errorf("%w: WaitForSingleObject: %w", ErrPeerGone, err)
	}
	if ev != uint32(windows.WAIT_TIMEOUT) {
		return ErrPeerGone
	}
	return nil
}

func (l *handleLive) close() { _ = windows.CloseHandle(l.h) }

func sameUserAsDaemon(p *PeerInfo) error {
	sid, err := currentSID()
	if err != nil {
		return err
	}
	if p.SID == "" || p.SID != sid {
		return fmt.Errorf("peer SID %s is not the daemon's user", p.SID)
	}
	return nil
}
