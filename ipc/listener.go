package ipc

import (
	"log/slog"
	"net"
	"sync"
)

// listener wraps the OS listener so that every connection it returns has
// its peer identified.
type listener struct {
	net.Listener
	peerOf func(net.Conn) (*PeerInfo, error)
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		p, err := l.peerOf(c)
		if err != nil {
			// Returning the error would end grpc.Serve for everyone
			// (SPIRE's TestAcceptDoesntFailWhenTrackerFails); dropping this
			// one client is the right blast radius.
			slog.Warn("ipc: dropping connection from unidentifiable peer", "err", err)
			_ = c.Close()
			continue
		}
		p.SecurityLevel = securityLevel
		return &conn{Conn: c, peer: p}, nil
	}
}

// conn is an accepted connection with its peer.
type conn struct {
	net.Conn
	peer *PeerInfo
	once sync.Once
	// pending holds bytes read during the handshake (Windows reads before
	// it may impersonate the client) and replays them to gRPC.
	pending []byte
}

func (c *conn) Read(b []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(b, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.peer.release)
	return err
}
