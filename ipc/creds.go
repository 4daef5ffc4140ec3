package ipc

import (
	"context"
	"errors"
	"net"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// securityLevel is what both ends report. The transport is not encrypted,
// but it never leaves the kernel and only the daemon's user can open it,
// which is what PrivacyAndIntegrity promises to gRPC features that check
// (per-RPC credentials refuse to travel over NoSecurity).
const securityLevel = credentials.PrivacyAndIntegrity

// ServerCredentials returns the daemon's gRPC transport credentials. They
// do no handshake; they attach the *PeerInfo captured by Listen's Accept,
// and fail connections that did not come from it.
func ServerCredentials() credentials.TransportCredentials { return serverCreds{} }

// ClientCredentials returns the matching client-side credentials: no
// handshake, as the endpoint's permissions already say who the server is.
func ClientCredentials() credentials.TransportCredentials { return clientCreds{} }

var errNotIPCConn = errors.New("ipc: connection was not accepted by an ipc.Listen listener")

type serverCreds struct{}

func (serverCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, ok := raw.(*conn)
	if !ok {
		return nil, nil, errNotIPCConn
	}
	// gRPC runs this per connection, off the accept loop, so an OS step
	// that must wait for the client (Windows) cannot stall other clients.
	if err := finishPeer(c); err != nil {
		return nil, nil, err
	}
	return c, c.peer, nil
}

func (serverCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("ipc: server credentials used on the client side")
}

func (serverCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: AuthType}
}
func (s serverCreds) Clone() credentials.TransportCredentials { return s }
func (serverCreds) OverrideServerName(string) error           { return nil }

type clientAuthInfo struct{ credentials.CommonAuthInfo }

func (clientAuthInfo) AuthType() string { return AuthType }

type clientCreds struct{}

func (clientCreds) ClientHandshake(_ context.Context, _ string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return raw, clientAuthInfo{credentials.CommonAuthInfo{SecurityLevel: securityLevel}}, nil
}

func (clientCreds) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("ipc: client credentials used on the server side")
}

func (clientCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: AuthType}
}
func (c clientCreds) Clone() credentials.TransportCredentials { return c }
func (clientCreds) OverrideServerName(string) error           { return nil }

// PeerFromContext returns the peer of the gRPC call in ctx, if the call
// came in over ipc.
func PeerFromContext(ctx context.Context) (*PeerInfo, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, false
	}
	pi, ok := p.AuthInfo.(*PeerInfo)
	return pi, ok && pi != nil
}

// ContextWithPeerForTest returns ctx carrying p the way gRPC would, for
// other packages' handler tests.
func ContextWithPeerForTest(ctx context.Context, p *PeerInfo) context.Context {
	return peer.NewContext(ctx, &peer.Peer{AuthInfo: p})
}
