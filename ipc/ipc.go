// Package ipc is the daemon's local transport: a Unix socket on Linux and
// macOS, a named pipe on Windows, carrying gRPC.
//
// The contract, modelled on Tailscale's safesocket and SPIRE's peertracker:
//   - Listen creates an endpoint only the daemon's user can reach (0700
//     directory and 0600 socket; a pipe DACL naming only the user and
//     SYSTEM). That is the first fence.
//   - Every accepted connection carries a *PeerInfo read from the kernel at
//     accept time (SO_PEERCRED, LOCAL_PEERCRED, the pipe client's token),
//     never from anything the client says. ServerCredentials hands it to
//     gRPC; handlers get it with PeerFromContext.
//   - UnaryGuard/StreamGuard refuse, before any handler, a peer of another
//     user (PermissionDenied) and a request without the GuardHeader
//     (InvalidArgument). The header cannot be set by a browser or a naive
//     local HTTP proxy, which blocks request forgery through them.
//   - The PID in PeerInfo is a label. Before acting on what the PID names
//     (attestation), call PeerInfo.Alive: it is backed by a handle on the
//     connecting process (pidfd, a /proc dir fd plus start time, a process
//     handle), so a reused PID is detected.
package ipc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"google.golang.org/grpc/credentials"
)

const (
	// GuardHeader and GuardValue must be sent as gRPC metadata on every
	// call; UnaryGuard/StreamGuard refuse calls without them.
	GuardHeader = "agentidd-client"
	GuardValue  = "1"

	// AuthType is PeerInfo's credentials.AuthInfo type.
	AuthType = "agentidd-local"

	// EnvSocket overrides DefaultPath for both the daemon and clients.
	EnvSocket = "AGENTIDD_SOCKET"
)

// ErrPeerGone means the process that opened the connection has exited, or
// its PID now names a different process, or the connection was closed.
var ErrPeerGone = errors.New("ipc: peer process is gone")

// AlreadyRunningError is returned by Listen when a live daemon already
// answers on the endpoint.
type AlreadyRunningError struct {
	Path string
	PID  int // 0 if the OS did not tell us
}

func (e *AlreadyRunningError) Error() string {
	if e.PID > 0 {
		return fmt.Sprintf("agentidd is already running (pid %d) on %s", e.PID, e.Path)
	}
	return "agentidd is already running on " + e.Path
}

// DefaultPath is the endpoint the daemon listens on and clients dial:
// $AGENTIDD_SOCKET if set, else the per-OS default (see docs/platforms.md).
func DefaultPath() (string, error) {
	if p := os.Getenv(EnvSocket); p != "" {
		return p, nil
	}
	return defaultPath()
}

// Listen creates the endpoint at path. Accept on the result returns only
// connections whose peer could be identified; others are logged and
// dropped, so an odd client can never stop grpc.Serve.
func Listen(path string) (net.Listener, error) {
	return listen(path)
}

// Dial connects to the daemon at path.
func Dial(ctx context.Context, path string) (net.Conn, error) {
	return dial(ctx, path)
}

// PeerInfo is what the kernel says about the process at the other end of
// a connection, captured at accept. UID and GID are -1 on Windows, SID is
// empty elsewhere. StartTime uses platform.Process.StartTime's units, so
// the broker can compare the two.
type PeerInfo struct {
	UID, GID, PID int
	SID           string
	StartTime     uint64
	// ExeDev and ExeIno name the file the process ran when it was accepted (Linux: /proc/<pid>/exe; macOS: the file
	// proc_pidpath names), valid when ExeRecorded (an inode number of 0 is a real one on FUSE). A process that connects,
	// hands the socket to a child and then execs a bound agent keeps its pid and start time; this is what gives it away.
	ExeDev, ExeIno uint64
	ExeRecorded    bool
	// ExeUnread: the OS records the executable at accept, but it could not be read. A process can arrange that on
	// purpose (non-dumpable on Linux, its executable deleted on macOS) and exec a bound agent afterwards, so the broker
	// treats it as having executed. Both flags false: the OS records nothing (Windows).
	ExeUnread bool

	credentials.CommonAuthInfo

	mu     sync.Mutex
	live   liveness // nil: never alive
	closed bool
	// exeHold keeps the recorded executable open (Linux) so that its inode number cannot be reused while the
	// connection lives; nil elsewhere.
	exeHold io.Closer
}

// liveness is the per-OS handle on the peer process.
type liveness interface {
	alive() error // nil, or an error wrapping ErrPeerGone
	close()
}

var _ credentials.AuthInfo = (*PeerInfo)(nil)

// AuthType implements credentials.AuthInfo.
func (p *PeerInfo) AuthType() string { return AuthType }

// Alive returns nil while the process that connected is still running and
// the connection is open; otherwise an error wrapping ErrPeerGone.
func (p *PeerInfo) Alive() error {
	if p == nil {
		return ErrPeerGone
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.live == nil {
		return ErrPeerGone
	}
	return p.live.alive()
}

// release drops the liveness handle when the connection closes; holding
// a pidfd or process handle per closed connection would leak.
func (p *PeerInfo) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	if p.live != nil {
		p.live.close()
	}
	if p.exeHold != nil {
		_ = p.exeHold.Close()
	}
}

func (p *PeerInfo) String() string {
	if p.SID != "" {
		return fmt.Sprintf("pid %d sid %s", p.PID, p.SID)
	}
	return fmt.Sprintf("pid %d uid %d", p.PID, p.UID)
}

type funcLiveness func() error

func (f funcLiveness) alive() error { return f() }
func (funcLiveness) close()         {}

// NewPeerInfoForTest returns a PeerInfo for other packages' tests. alive
// decides what Alive returns; nil means always alive.
func NewPeerInfoForTest(uid, gid, pid int, sid string, startTime uint64, alive func() error) *PeerInfo {
	if alive == nil {
		alive = func() error { return nil }
	}
	return &PeerInfo{
		UID: uid, GID: gid, PID: pid, SID: sid, StartTime: startTime,
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		live:           funcLiveness(alive),
	}
}
