//go:build windows

package ipc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

// These run on Windows and under wine (scripts/wine-test). Every wait is
// bounded so that a hang (wine's go-winio Accept) fails the test instead of
// stalling the binary.

var pipeSeq atomic.Int64

// testPipe is a fresh pipe name per test, so a leftover instance from an
// earlier test cannot make Listen fail.
func testPipe(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf(`\\.\pipe\agentidd-test-%d-%d`, os.Getpid(), pipeSeq.Add(1))
}

func TestDefaultPathWindows(t *testing.T) {
	t.Setenv(EnvSocket, "")
	p, err := DefaultPath()
	if err != nil {
		t.Fatalf("DefaultPath: %v", err)
	}
	sid, err := currentSID()
	if err != nil {
		t.Fatalf("currentSID: %v", err)
	}
	if !sidRE.MatchString(sid) {
		t.Fatalf("currentSID = %q, not a SID", sid)
	}
	if want := `\\.\pipe\agentidd-` + sid; p != want {
		t.Fatalf("DefaultPath = %q, want %q", p, want)
	}
}

func TestPipeDialConnects(t *testing.T) {
	path := testPipe(t)
	ln, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	defer ln.Close()
	// Dial needs no Accept: the first instance is already listening, and
	// Dial's server check (server pid's token SID == ours) must pass.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	_ = c.Close()
}

func TestDialNoPipe(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := Dial(ctx, testPipe(t))
	if err == nil {
		_ = c.Close()
		t.Fatal("Dial to a pipe nobody created succeeded")
	}
}

func TestSecondListenAlreadyRunningWindows(t *testing.T) {
	path := testPipe(t)
	ln, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	defer ln.Close()
	ln2, err := Listen(path)
	if err == nil {
		_ = ln2.Close()
		t.Fatal("second Listen on the same pipe succeeded")
	}
	var are *AlreadyRunningError
	if !errors.As(err, &are) {
		t.Fatalf("second Listen: %v, want *AlreadyRunningError", err)
	}
	if are.PID != os.Getpid() || are.Path != path {
		t.Fatalf("AlreadyRunningError = %+v, want pid %d path %s", are, os.Getpid(), path)
	}
}

// TestPipeRoundTrip is the full path: Accept identifies the peer (pid via
// GetNamedPipeClientProcessId, SID via impersonation) and a guarded gRPC
// health call succeeds.
func TestPipeRoundTrip(t *testing.T) {
	path := testPipe(t)
	ln, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	type seenPeer struct {
		p     *PeerInfo
		alive error
	}
	peers := make(chan seenPeer, 4)
	record := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		p, _ := PeerFromContext(ctx)
		peers <- seenPeer{p, p.Alive()}
		return h(ctx, req)
	}
	s := grpc.NewServer(grpc.Creds(ServerCredentials()),
		grpc.ChainUnaryInterceptor(UnaryGuard(), record))
	healthpb.RegisterHealthServer(s, health.NewServer())
	go func() { _ = s.Serve(ln) }()
	defer s.Stop()

	cc, err := grpc.NewClient("passthrough:///agentidd",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return Dial(ctx, path) }),
		grpc.WithTransportCredentials(ClientCredentials()))
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, GuardHeader, GuardValue)
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health check: %v", err)
	}
	got := <-peers
	sid, err := currentSID()
	if err != nil {
		t.Fatalf("currentSID: %v", err)
	}
	if got.p.PID != os.Getpid() || got.p.SID != sid || got.p.UID != -1 {
		t.Errorf("peer = pid %d sid %q uid %d, want pid %d sid %q uid -1", got.p.PID, got.p.SID, got.p.UID, os.Getpid(), sid)
	}
	if got.p.StartTime == 0 {
		t.Error("StartTime not set")
	}
	if got.alive != nil {
		t.Errorf("Alive during the call: %v", got.alive)
	}
	if !strings.Contains(got.p.String(), "sid "+sid) {
		t.Errorf("String() = %q, want it to name the SID", got.p.String())
	}
}
