package platform

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
)

// ErrNoTCPPeer means no local socket matches a TCP connection: the peer is remote, in another network namespace, or
// its sockets are not visible to this user.
var ErrNoTCPPeer = errors.New("no local process holds that TCP connection")

// TCPPeer is the local process side of a loopback TCP connection.
type TCPPeer struct {
	// UID owns the client socket.
	UID int
	// PIDs hold the client socket open (a forked child shares its parent's sockets), lowest first.
	PIDs []int
}

// TCPPeerFinder names the local process at the client end of a TCP connection to one of our listeners, given the
// connection's client (remote) and server (local) addresses as the server sees them.
type TCPPeerFinder func(client, server netip.AddrPort) (TCPPeer, error)

var (
	tcpPeerMu     sync.Mutex
	tcpPeerFinder TCPPeerFinder
)

// RegisterTCPPeerFinder is called by the per-OS platform package in its init.
func RegisterTCPPeerFinder(fn TCPPeerFinder) {
	tcpPeerMu.Lock()
	defer tcpPeerMu.Unlock()
	tcpPeerFinder = fn
}

// FindTCPPeer returns who holds the client end of a loopback connection. Where the OS package has no implementation
// (only Linux has one so far) it fails with ErrUnsupportedPlatform, so callers refuse rather than guess.
func FindTCPPeer(client, server netip.AddrPort) (TCPPeer, error) {
	tcpPeerMu.Lock()
	fn := tcpPeerFinder
	tcpPeerMu.Unlock()
	if fn == nil {
		return TCPPeer{}, fmt.Errorf("identify TCP peer: %w", ErrUnsupportedPlatform)
	}
	return fn(client, server)
}
