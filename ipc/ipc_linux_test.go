//go:build linux

package ipc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"golang.org/x/sys/unix"
)

const (
	envChild = "AGENTIDD_IPC_TEST_CHILD"
	envSock  = "AGENTIDD_IPC_TEST_SOCK"
)

// TestMain doubles as the child process for tests that need a second
// process (another uid, or one that exits while connected).
func TestMain(m *testing.M) {
	switch os.Getenv(envChild) {
	case "":
		os.Exit(m.Run())
	case "dial":
		// Prints the gRPC code a health check got. A hostile client would
		// not use ipc.Dial (which refuses a server of another uid), so
		// this one dials the socket directly.
		rawDial := func(ctx context.Context, path string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
		_, err := healthCheckWith(context.Background(), os.Getenv(envSock), true, rawDial)
		fmt.Println(status.Code(err))
		os.Exit(0)
	case "listen":
		// A server of another uid: listens, says so, serves until killed.
		ln, err := net.Listen("unix", os.Getenv(envSock))
		if err != nil {
			fmt.Println("listen:", err)
			os.Exit(1)
		}
		fmt.Println("ready")
		// Connections stay open until the parent kills us.
		held := make(chan net.Conn, 16)
		for {
			c, err := ln.Accept()
			if err != nil {
				os.Exit(1)
			}
			select {
			case held <- c:
			default:
				_ = c.Close()
			}
		}
	case "exec":
		// Connects, says so, waits for a line, then execs sleep with the connection still open (a child of an attacker
		// would hold it; here the execed program does).
		c, err := Dial(context.Background(), os.Getenv(envSock))
		if err != nil {
			fmt.Println("dial:", err)
			os.Exit(1)
		}
		if uc, ok := c.(*net.UnixConn); ok {
			if f, err := uc.File(); err == nil {
				_, _ = unix.FcntlInt(f.Fd(), unix.F_SETFD, 0) // no close-on-exec: the connection survives the exec
			}
		}
		fmt.Println("connected")
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		sleep, _ := exec.LookPath("sleep")
		_ = syscall.Exec(sleep, []string{"sleep", "30"}, os.Environ())
		os.Exit(1)
	case "hold":
		// Connects, says so, and stays connected until stdin closes.
		c, err := Dial(context.Background(), os.Getenv(envSock))
		if err != nil {
			fmt.Println("dial:", err)
			os.Exit(1)
		}
		fmt.Println("connected")
		_, _ = io.Copy(io.Discard, os.Stdin)
		_ = c.Close()
		os.Exit(0)
	}
}

func healthCheck(ctx context.Context, path string, withHeader bool) (*healthpb.HealthCheckResponse, error) {
	return healthCheckWith(ctx, path, withHeader, Dial)
}

func healthCheckWith(ctx context.Context, path string, withHeader bool, dial func(context.Context, string) (net.Conn, error)) (*healthpb.HealthCheckResponse, error) {
	cc, err := grpc.NewClient("passthrough:///agentidd",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return dial(ctx, path) }),
		grpc.WithTransportCredentials(ClientCredentials()))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	if withHeader {
		ctx = metadata.AppendToOutgoingContext(ctx, GuardHeader, GuardValue)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
}

// seen is what the handler side saw of one call: the peer, and whether it
// was alive during the call (after the call the client disconnects).
type seen struct {
	p     *PeerInfo
	alive error
}

// serve runs a guarded gRPC health server on path and returns a channel
// with every call that passed the guard.
func serve(t *testing.T, path string) (net.Listener, <-chan seen) {
	t.Helper()
	ln, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	peers := make(chan seen, 16)
	record := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		p, _ := PeerFromContext(ctx)
		peers <- seen{p, p.Alive()}
		return h(ctx, req)
	}
	s := grpc.NewServer(grpc.Creds(ServerCredentials()),
		grpc.ChainUnaryInterceptor(UnaryGuard(), record),
		grpc.ChainStreamInterceptor(StreamGuard()))
	healthpb.RegisterHealthServer(s, health.NewServer())
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	return ln, peers
}

func sockPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "run", "agentidd.sock")
}

func TestRoundTrip(t *testing.T) {
	path := sockPath(t)
	_, peers := serve(t, path)

	if _, err := healthCheck(context.Background(), path, true); err != nil {
		t.Fatalf("health check: %v", err)
	}
	got := <-peers
	p := got.p
	if p == nil {
		t.Fatal("handler saw no PeerInfo")
	}
	if p.UID != os.Geteuid() || p.GID != os.Getegid() || p.PID != os.Getpid() {
		t.Errorf("peer = uid %d gid %d pid %d, want %d %d %d", p.UID, p.GID, p.PID, os.Geteuid(), os.Getegid(), os.Getpid())
	}
	if p.StartTime == 0 {
		t.Error("StartTime not set")
	}
	if got.alive != nil {
		t.Errorf("Alive during the call: %v", got.alive)
	}
	if p.AuthType() != AuthType {
		t.Errorf("AuthType = %q", p.AuthType())
	}

	for _, c := range []struct {
		path string
		want os.FileMode
	}{{path, 0o600}, {filepath.Dir(path), 0o700}} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != c.want {
			t.Errorf("%s mode %#o, want %#o", c.path, fi.Mode().Perm(), c.want)
		}
	}
}

func TestMissingGuardHeader(t *testing.T) {
	path := sockPath(t)
	serve(t, path)
	_, err := healthCheck(context.Background(), path, false)
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("without %s: %v, want InvalidArgument", GuardHeader, err)
	}
}

func TestListenRefusesUnsafeDir(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string) // dir is the socket's parent
		wantSub string
		root    bool
	}{
		{"group/world readable", func(t *testing.T, dir string) { mkdir(t, dir, 0o755) }, "mode 0755", false},
		{"group writable", func(t *testing.T, dir string) { mkdir(t, dir, 0o770) }, "mode 0770", false},
		{"foreign owner", func(t *testing.T, dir string) {
			mkdir(t, dir, 0o700)
			if err := os.Chown(dir, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}, "owned by uid 65534", true},
		{"symlink", func(t *testing.T, dir string) {
			real := dir + ".real"
			mkdir(t, real, 0o700)
			if err := os.Symlink(real, dir); err != nil {
				t.Fatal(err)
			}
		}, "not a directory", false},
		{"not a socket at path", func(t *testing.T, dir string) {
			mkdir(t, dir, 0o700)
			if err := os.WriteFile(filepath.Join(dir, "agentidd.sock"), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "not a socket", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root && os.Geteuid() != 0 {
				t.Skip("needs root to chown")
			}
			dir := filepath.Join(t.TempDir(), "run")
			tt.setup(t, dir)
			ln, err := Listen(filepath.Join(dir, "agentidd.sock"))
			if err == nil {
				ln.Close()
				t.Fatal("Listen succeeded, want refusal")
			}
			if !strings.Contains(err.Error(), tt.wantSub) {
				t.Fatalf("error %q does not mention %q", err, tt.wantSub)
			}
		})
	}
}

func mkdir(t *testing.T, dir string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(dir, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil { // umask
		t.Fatal(err)
	}
}

func TestListenRefusesLongPath(t *testing.T) {
	path := "/tmp/" + strings.Repeat("x", maxSunPath) + "/agentidd.sock"
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), EnvSocket) {
		t.Fatalf("Listen(long path) = %v, want an error naming %s", err, EnvSocket)
	}
}

func TestStaleSocketRemoved(t *testing.T) {
	path := sockPath(t)
	mkdir(t, filepath.Dir(path), 0o700)
	// A dead daemon's socket: bound, then closed without unlinking.
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stale socket not there: %v", err)
	}
	serve(t, path)
	if _, err := healthCheck(context.Background(), path, true); err != nil {
		t.Fatalf("after replacing the stale socket: %v", err)
	}
}

func TestSecondListenAlreadyRunning(t *testing.T) {
	path := sockPath(t)
	serve(t, path)
	ln, err := Listen(path)
	if err == nil {
		ln.Close()
		t.Fatal("second Listen succeeded")
	}
	var are *AlreadyRunningError
	if !errors.As(err, &are) {
		t.Fatalf("second Listen: %v, want *AlreadyRunningError", err)
	}
	if are.PID != os.Getpid() || are.Path != path {
		t.Fatalf("AlreadyRunningError = %+v, want pid %d path %s", are, os.Getpid(), path)
	}
	if !strings.Contains(are.Error(), fmt.Sprint(os.Getpid())) {
		t.Errorf("message %q does not name the pid", are.Error())
	}
	// The live daemon must still work after being probed.
	if _, err := healthCheck(context.Background(), path, true); err != nil {
		t.Fatalf("first daemon broken by the probe: %v", err)
	}
}

func TestOtherUserPermissionDenied(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as uid 65534")
	}
	// The normal layout (0700 dir, 0600 socket) stops uid 65534 at the
	// filesystem, so it would never reach the uid check we want to test.
	// For this test only, let it through: the temp dirs become 0711
	// (traversable, not listable, so nobody can find or swap anything),
	// the socket 0666; and the test binary is copied where uid 65534 can
	// execute it (go test's build dir is 0700).
	base := t.TempDir()
	for d := base; d != "/tmp" && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(base, "run", "agentidd.sock")
	serve(t, path)
	if err := os.Chmod(filepath.Dir(path), 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "ipc.test")
	copyFile(t, bin)

	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"=dial", envSock+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != codes.PermissionDenied.String() {
		t.Fatalf("uid 65534 got %q, want PermissionDenied", got)
	}
}

// TestDialRefusesOtherUsersServer: a socket served by another uid (say,
// one created first at a guessable path) must not get our requests.
func TestDialRefusesOtherUsersServer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a server as uid 65534")
	}
	base := t.TempDir()
	for d := base; d != "/tmp" && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(base, "run")
	mkdir(t, dir, 0o700)
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "agentidd.sock")
	bin := filepath.Join(base, "ipc.test")
	copyFile(t, bin)
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"=listen", envSock+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "ready\n" {
		t.Fatalf("server child said %q", line)
	}
	c, err := Dial(context.Background(), path)
	if err == nil {
		c.Close()
		t.Fatal("Dial accepted a server of uid 65534")
	}
	if !strings.Contains(err.Error(), "served by uid 65534") {
		t.Fatalf("Dial error %q does not name the server's uid", err)
	}
}

func copyFile(t *testing.T, dst string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestAliveAfterPeerExits: a child connects, the daemon accepts it, the
// child exits and is reaped; Alive must report it gone, both with a pidfd
// and with the /proc fallback.
func TestAliveAfterPeerExits(t *testing.T) {
	for _, pidfd := range []bool{true, false} {
		t.Run(fmt.Sprintf("pidfd=%v", pidfd), func(t *testing.T) {
			saved := usePIDFD
			usePIDFD = pidfd
			t.Cleanup(func() { usePIDFD = saved })

			path := sockPath(t)
			ln, err := Listen(path)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()

			cmd, stdin := connectedChild(t, "hold", path)

			c, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			p := c.(*conn).peer
			if p.PID != cmd.Process.Pid {
				t.Fatalf("peer pid %d, want child %d", p.PID, cmd.Process.Pid)
			}
			if _, isPIDFD := p.live.(*pidfdLive); isPIDFD != pidfd {
				t.Fatalf("liveness %T, want pidfd=%v", p.live, pidfd)
			}
			if err := p.Alive(); err != nil {
				t.Fatalf("Alive while child runs: %v", err)
			}

			stdin.Close()
			if err := cmd.Wait(); err != nil {
				t.Fatalf("child: %v", err)
			}
			if err := p.Alive(); !errors.Is(err, ErrPeerGone) {
				t.Fatalf("Alive after child exited = %v, want ErrPeerGone", err)
			}
			c.Close()
			if err := p.Alive(); !errors.Is(err, ErrPeerGone) {
				t.Fatalf("Alive after conn closed = %v, want ErrPeerGone", err)
			}
		})
	}
}

// TestProcLiveDetectsPIDReuse: a reused pid shows a new start time in
// /proc/<pid>/stat; simulate that with a fake reader.
func TestProcLiveDetectsPIDReuse(t *testing.T) {
	stat := func(start string) []byte {
		return []byte("42 (a b) c) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 " + start + " 0 0\n")
	}
	tests := []struct {
		name    string
		read    func() ([]byte, error)
		wantErr bool
	}{
		{"same process", func() ([]byte, error) { return stat("5000"), nil }, false},
		{"pid reused", func() ([]byte, error) { return stat("9000"), nil }, true},
		{"process gone", func() ([]byte, error) { return nil, syscall.ESRCH }, true},
		{"garbage", func() ([]byte, error) { return []byte("42 (x"), nil }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &procLive{readStat: tt.read, start: 5000}
			err := l.alive()
			if tt.wantErr != (err != nil) {
				t.Fatalf("alive() = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrPeerGone) {
				t.Fatalf("alive() = %v, want ErrPeerGone", err)
			}
		})
	}
}

func TestDefaultPathLinux(t *testing.T) {
	tests := []struct {
		name, env, xdg, want string
	}{
		{"override", "/x/y.sock", "/run/user/1", "/x/y.sock"},
		{"xdg", "", "/run/user/1", "/run/user/1/agentidd/agentidd.sock"},
		{"relative xdg ignored", "", "run", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(EnvSocket, tt.env)
			t.Setenv("XDG_RUNTIME_DIR", tt.xdg)
			t.Setenv("XDG_CACHE_HOME", "/home/u/.cache")
			got, err := DefaultPath()
			if err != nil {
				t.Fatal(err)
			}
			want := tt.want
			if want == "" {
				want = "/home/u/.cache/agentidd/run/agentidd.sock"
			}
			if got != want {
				t.Fatalf("DefaultPath = %q, want %q", got, want)
			}
		})
	}
}

// TestPeerReapedBeforeAccept: a client that connects and is gone (exited and reaped) before the daemon accepts must not
// be looked up by its pid, which may name another process by then.
func TestPeerReapedBeforeAccept(t *testing.T) {
	for _, pidfd := range []bool{true, false} {
		t.Run(fmt.Sprintf("pidfd=%v", pidfd), func(t *testing.T) {
			saved := usePIDFD
			usePIDFD = pidfd
			t.Cleanup(func() { usePIDFD = saved })
			path := filepath.Join(t.TempDir(), "s.sock")
			ln, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			cmd, stdin := connectedChild(t, "hold", path)
			stdin.Close()
			if err := cmd.Wait(); err != nil { // reaped: its pid is free for reuse
				t.Fatalf("child: %v", err)
			}
			c, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// Kernels 6.5-6.14 refuse SO_PEERPIDFD for a reaped peer (ESRCH); later ones hand out a pidfd that reads as
			// exited. Either way the answer must be "gone", never a process found by the pid.
			if p, err := peerOf(c); !errors.Is(err, ErrPeerGone) {
				t.Fatalf("peerOf a reaped client = %+v, %v; want ErrPeerGone", p, err)
			}
		})
	}
}

// TestPeerRecordsTheExecutableAtAccept: the peer's executable is recorded when it is accepted, so that a later exec
// (which keeps the pid and start time) shows.
func TestPeerRecordsTheExecutableAtAccept(t *testing.T) {
	path := sockPath(t)
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, stdin := connectedChild(t, "exec", path)
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := c.(*conn).peer
	var self, now unix.Stat_t
	if err := unix.Stat(os.Args[0], &self); err != nil {
		t.Fatal(err)
	}
	if !p.ExeRecorded || p.ExeUnread || p.ExeDev != self.Dev || p.ExeIno != self.Ino {
		t.Fatalf("recorded exe %d:%d, want the test binary %d:%d", p.ExeDev, p.ExeIno, self.Dev, self.Ino)
	}
	// The recorded file is held open for the connection's life, so its inode number cannot be reused by a new file.
	held, ok := p.exeHold.(*os.File)
	if !ok {
		t.Fatalf("the recorded executable is not held: %T", p.exeHold)
	}
	var hst unix.Stat_t
	if err := unix.Fstat(int(held.Fd()), &hst); err != nil || hst.Ino != self.Ino || hst.Dev != self.Dev {
		t.Fatalf("the held file is %d:%d (%v), want the test binary", hst.Dev, hst.Ino, err)
	}
	defer func() {
		c.Close()
		if err := unix.Fstat(int(held.Fd()), &hst); err == nil {
			t.Error("the held executable is still open after the connection closed")
		}
	}()
	if _, err := stdin.Write([]byte("exec\n")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := unix.Stat(fmt.Sprintf("/proc/%d/exe", p.PID), &now); err == nil && now.Ino != self.Ino {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the child did not exec")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.Alive(); err != nil {
		t.Fatalf("after exec the peer is still the same process: %v", err)
	}
	if p.ExeIno == now.Ino && p.ExeDev == now.Dev {
		t.Fatal("the recorded exe followed the exec")
	}
}

// connectedChild starts this test binary as a child in mode (see TestMain) dialing path, and returns once it says it
// has connected; its stdin is the returned writer. The child is killed and reaped at the test's end unless the test
// waits for it first.
func connectedChild(t *testing.T, mode, path string) (*exec.Cmd, io.WriteCloser) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"="+mode, envSock+"="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "connected\n" {
		t.Fatalf("child said %q", line)
	}
	return cmd, stdin
}
