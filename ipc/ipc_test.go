package ipc

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func TestGuard(t *testing.T) {
	daemon := NewPeerInfoForTest(1000, 1000, 42, "S-1-5-21-1-2-3-1001", 9, nil)
	other := NewPeerInfoForTest(1001, 1001, 43, "S-1-5-21-1-2-3-1002", 9, nil)
	saved := sameUser
	t.Cleanup(func() { sameUser = saved })
	sameUser = func(p *PeerInfo) error {
		if p != daemon {
			return errors.New("peer uid 1001 is not the daemon's user")
		}
		return nil
	}
	withHeader := metadata.Pairs(GuardHeader, GuardValue)
	tests := []struct {
		name   string
		peer   *PeerInfo
		md     metadata.MD
		want   codes.Code
		reason string
		msg    string
	}{
		{"ok", daemon, withHeader, codes.OK, "", ""},
		{"no peer", nil, withHeader, codes.PermissionDenied, ReasonNotAttested, "peer identity unknown"},
		{"other user", other, withHeader, codes.PermissionDenied, ReasonOtherUser, "peer uid 1001 is not the daemon's user"},
		{"other user without header: uid wins", other, nil, codes.PermissionDenied, ReasonOtherUser, "not the daemon's user"},
		{"no header", daemon, nil, codes.InvalidArgument, ReasonInvalidArgument, GuardHeader},
		{"wrong value", daemon, metadata.Pairs(GuardHeader, "yes"), codes.InvalidArgument, ReasonInvalidArgument, GuardHeader},
		{"header twice", daemon, metadata.Pairs(GuardHeader, GuardValue, GuardHeader, GuardValue), codes.InvalidArgument, ReasonInvalidArgument, GuardHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if tt.peer != nil {
				ctx = ContextWithPeerForTest(ctx, tt.peer)
			}
			if tt.md != nil {
				ctx = metadata.NewIncomingContext(ctx, tt.md)
			}
			var ran atomic.Int32
			_, uerr := UnaryGuard()(ctx, nil, &grpc.UnaryServerInfo{}, func(context.Context, any) (any, error) {
				ran.Add(1)
				return nil, nil
			})
			serr := StreamGuard()(nil, fakeStream{ctx}, &grpc.StreamServerInfo{}, func(any, grpc.ServerStream) error {
				ran.Add(1)
				return nil
			})
			for _, err := range []error{uerr, serr} {
				if status.Code(err) != tt.want {
					t.Fatalf("code %v (%v), want %v", status.Code(err), err, tt.want)
				}
				if tt.msg != "" && !strings.Contains(status.Convert(err).Message(), tt.msg) {
					t.Fatalf("message %q lacks %q", status.Convert(err).Message(), tt.msg)
				}
				if got := ErrorInfo(err).GetReason(); got != tt.reason || (tt.reason != "" && ErrorInfo(err).GetDomain() != ErrorDomain) {
					t.Fatalf("reason %q (domain %q), want %q", got, ErrorInfo(err).GetDomain(), tt.reason)
				}
			}
			wantRuns := int32(0)
			if tt.want == codes.OK {
				wantRuns = 2
			}
			if ran.Load() != wantRuns {
				t.Fatalf("handler ran %d times, want %d", ran.Load(), wantRuns)
			}
		})
	}
}

type fakeStream struct{ ctx context.Context }

func (f fakeStream) Context() context.Context   { return f.ctx }
func (fakeStream) SetHeader(metadata.MD) error  { return nil }
func (fakeStream) SendHeader(metadata.MD) error { return nil }
func (fakeStream) SetTrailer(metadata.MD)       {}
func (fakeStream) SendMsg(any) error            { return nil }
func (fakeStream) RecvMsg(any) error            { return nil }

// fakeListener hands out the given conns, then io errors.
type fakeListener struct {
	conns chan net.Conn
}

func (f *fakeListener) Accept() (net.Conn, error) {
	c, ok := <-f.conns
	if !ok {
		return nil, net.ErrClosed
	}
	return c, nil
}
func (f *fakeListener) Close() error   { return nil }
func (f *fakeListener) Addr() net.Addr { return nil }

func TestAcceptSkipsUnidentifiablePeers(t *testing.T) {
	bad1, bad1Peer := net.Pipe()
	good, goodPeer := net.Pipe()
	defer bad1Peer.Close()
	defer goodPeer.Close()
	fl := &fakeListener{conns: make(chan net.Conn, 2)}
	fl.conns <- bad1
	fl.conns <- good
	close(fl.conns)
	released := 0
	l := &listener{Listener: fl, peerOf: func(c net.Conn) (*PeerInfo, error) {
		if c == bad1 {
			return nil, errors.New("no creds")
		}
		p := NewPeerInfoForTest(1, 1, 7, "", 1, nil)
		p.live = countingLive{&released}
		return p, nil
	}}
	c, err := l.Accept()
	if err != nil {
		t.Fatalf("Accept returned %v; a bad peer must be skipped, not returned", err)
	}
	if c.(*conn).Conn != good {
		t.Fatal("Accept returned the unidentifiable connection")
	}
	// The dropped connection was closed.
	if _, err := bad1Peer.Write([]byte("x")); err == nil {
		t.Error("unidentified connection left open")
	}
	// ServerCredentials hands the PeerInfo to gRPC.
	_, ai, err := ServerCredentials().ServerHandshake(c)
	if err != nil || ai.(*PeerInfo).PID != 7 || ai.AuthType() != AuthType {
		t.Fatalf("ServerHandshake = %v, %v", ai, err)
	}
	if ai.(*PeerInfo).SecurityLevel != securityLevel {
		t.Errorf("SecurityLevel %v", ai.(*PeerInfo).SecurityLevel)
	}
	c.Close()
	c.Close()
	if released != 1 {
		t.Errorf("liveness released %d times, want 1", released)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after close = %v", err)
	}
}

type countingLive struct{ n *int }

func (countingLive) alive() error { return nil }
func (c countingLive) close()     { *c.n++ }

func TestServerHandshakeRefusesForeignConn(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, _, err := ServerCredentials().ServerHandshake(a); !errors.Is(err, errNotIPCConn) {
		t.Fatalf("ServerHandshake(plain conn) = %v, want errNotIPCConn", err)
	}
}

func TestPeerInfoAlive(t *testing.T) {
	gone := errors.New("gone")
	tests := []struct {
		name string
		p    *PeerInfo
		want error
	}{
		{"nil", nil, ErrPeerGone},
		{"zero value", &PeerInfo{}, ErrPeerGone},
		{"alive", NewPeerInfoForTest(1, 1, 1, "", 1, nil), nil},
		{"custom", NewPeerInfoForTest(1, 1, 1, "", 1, func() error { return gone }), gone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.p.Alive(); !errors.Is(err, tt.want) && err != tt.want {
				t.Fatalf("Alive = %v, want %v", err, tt.want)
			}
		})
	}
	p := NewPeerInfoForTest(1, 1, 1, "", 1, nil)
	p.release()
	if err := p.Alive(); !errors.Is(err, ErrPeerGone) {
		t.Fatalf("Alive after release = %v", err)
	}
}

func TestFitSocketPath(t *testing.T) {
	long := "/Users/" + strings.Repeat("n", 80) + "/Library/Application Support/agentidd/agentidd.sock"
	tests := []struct {
		name  string
		cands []string
		want  string
	}{
		{"first fits", []string{"/a/agentidd.sock", "/b/agentidd.sock"}, "/a/agentidd.sock"},
		{"fallback to second", []string{long, "/var/folders/xy/T/agentidd/agentidd.sock"}, "/var/folders/xy/T/agentidd/agentidd.sock"},
		{"empty skipped", []string{"", "/b.sock"}, "/b.sock"},
		{"exactly at limit", []string{"/" + strings.Repeat("x", maxSunPathDarwin-1)}, "/" + strings.Repeat("x", maxSunPathDarwin-1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fitSocketPath(tt.cands, 501, maxSunPathDarwin); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
	// None fits: a hashed path in a per-uid /tmp dir, stable, short, not
	// a truncation, and different for different inputs.
	h1 := fitSocketPath([]string{long}, 501, maxSunPathDarwin)
	h2 := fitSocketPath([]string{long + "x"}, 501, maxSunPathDarwin)
	if !strings.HasPrefix(h1, "/tmp/agentidd-501/") || !strings.HasSuffix(h1, ".sock") || len(h1) > maxSunPathDarwin {
		t.Fatalf("hashed path %q", h1)
	}
	if h1 != fitSocketPath([]string{long}, 501, maxSunPathDarwin) || h1 == h2 {
		t.Fatalf("hashed paths not stable or not distinct: %q %q", h1, h2)
	}
}

func TestPipeSDDL(t *testing.T) {
	tests := []struct {
		sid, want string
		wantErr   bool
	}{
		{"S-1-5-21-1004336348-1177238915-682003330-1001", "D:P(A;;GA;;;S-1-5-21-1004336348-1177238915-682003330-1001)(A;;GA;;;SY)", false},
		{"S-1-5-18", "D:P(A;;GA;;;S-1-5-18)(A;;GA;;;SY)", false},
		{"", "", true},
		{"WD", "", true}, // an SDDL alias, not a SID: would grant Everyone
		{"S-1-5-21-1)(A;;GA;;;WD", "", true},
		{"S-1", "", true},
	}
	for _, tt := range tests {
		got, err := pipeSDDL(tt.sid)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("pipeSDDL(%q) = %q, %v; want %q, err %v", tt.sid, got, err, tt.want, tt.wantErr)
		}
	}
	if got := pipeName("S-1-5-18"); got != `\\.\pipe\agentidd-S-1-5-18` {
		t.Errorf("pipeName = %q", got)
	}
}

func TestStartTimeLive(t *testing.T) {
	tests := []struct {
		name    string
		read    func(int) (uint64, error)
		wantErr bool
	}{
		{"same", func(int) (uint64, error) { return 5, nil }, false},
		{"reused", func(int) (uint64, error) { return 6, nil }, true},
		{"gone", func(int) (uint64, error) { return 0, errors.New("no process") }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := (&startTimeLive{pid: 9, start: 5, read: tt.read}).alive()
			if (err != nil) != tt.wantErr || (err != nil && !errors.Is(err, ErrPeerGone)) {
				t.Fatalf("alive = %v, wantErr %v (as ErrPeerGone)", err, tt.wantErr)
			}
		})
	}
}

func TestConnReplaysPending(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := &conn{Conn: a, peer: NewPeerInfoForTest(1, 1, 1, "", 1, nil), pending: []byte("PRI")}
	go func() { _, _ = b.Write([]byte(" *")) }()
	buf := make([]byte, 2)
	var got []byte
	for len(got) < 5 {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != "PRI *" {
		t.Fatalf("read %q, want %q", got, "PRI *")
	}
}
