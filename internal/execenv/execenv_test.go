package execenv

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentidd/agentidd/platform"
	_ "github.com/agentidd/agentidd/platform/osimpl"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

const (
	testResource = "api://files.contoso.example"
	testAppID    = "c7d8e9f0-a1b2-4c3d-9e4f-5a6b7c8d9e0f"
)

var expiry = time.Unix(1_900_000_000, 0)

type recorder struct {
	mu        sync.Mutex
	calls     []*agentidv1.GetTokenRequest
	pids      []int
	clientIDs []string
	err       error
}

// token answers as the daemon does: a client_id other than the agent's is refused (before anything is minted).
func (r *recorder) token(_ context.Context, pid int, clientID string, req *agentidv1.GetTokenRequest) (*agentidv1.GetTokenResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, req)
	r.pids = append(r.pids, pid)
	r.clientIDs = append(r.clientIDs, clientID)
	if r.err != nil {
		return nil, r.err
	}
	if clientID != "" && !strings.EqualFold(clientID, testAppID) {
		return nil, status.Error(codes.InvalidArgument, "client_id "+clientID+" is not the identity of agent test-agent")
	}
	return &agentidv1.GetTokenResponse{AccessToken: "tok-" + strings.Join(req.GetScopes(), ","), ExpiresAt: timestamppb.New(expiry),
		Principal: &agentidv1.Principal{AgentAppId: testAppID}}, nil
}

func needLinux(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("FindTCPPeer is implemented on Linux only")
	}
}

func start(t *testing.T, o Options, root int) (*Endpoint, *recorder) {
	t.Helper()
	rec := &recorder{}
	o.Agent = "test-agent"
	o.Token = rec.token
	e, err := Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if root != 0 {
		e.Bind(root)
	}
	return e, rec
}

func get(t *testing.T, e *Endpoint, method, query string, hdr map[string]string) (int, map[string]string) {
	t.Helper()
	req, err := http.NewRequest(method, e.URL()+"?"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := map[string]string{}
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("body %q is not a JSON object of strings: %v", b, err)
	}
	return resp.StatusCode, out
}

func secretOf(e *Endpoint) string {
	for _, kv := range e.Env() {
		if v, ok := strings.CutPrefix(kv, EnvHeader+"="); ok {
			return v
		}
	}
	return ""
}

func TestEnv(t *testing.T) {
	e, _ := start(t, Options{}, 0)
	env := e.Env()
	if len(env) != 2 || !strings.HasPrefix(env[0], EnvEndpoint+"=http://127.0.0.1:") || !strings.HasSuffix(env[0], "/") {
		t.Fatalf("env = %q", env)
	}
	if s := secretOf(e); len(s) != 64 {
		t.Fatalf("IDENTITY_HEADER %q is not 32 random bytes in hex", s)
	}
	e2, _ := start(t, Options{}, 0)
	if secretOf(e2) == secretOf(e) {
		t.Fatal("two endpoints share a header secret")
	}
}

func TestServe(t *testing.T) {
	needLinux(t)
	outsider := exec.Command("sleep", "30")
	if err := outsider.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = outsider.Process.Kill(); _ = outsider.Wait() })
	okQuery := "api-version=2019-08-01&resource=" + testResource
	tests := []struct {
		name      string
		method    string
		query     string
		header    string // "" none, "good", else a wrong value
		extra     map[string]string
		root      int // 0: the test process (inside the tree)
		opts      Options
		daemonErr error
		wantCode  int
		wantCall  bool
		wantScope []string
	}{
		{name: "ok", query: okQuery, header: "good", wantCode: 200, wantCall: true, wantScope: []string{testResource + "/.default"}},
		{name: "trailing slash resource", query: "api-version=2019-08-01&resource=https://vault.example/", header: "good", wantCode: 200, wantCall: true,
			wantScope: []string{"https://vault.example/.default"}},
		{name: "fixed scopes", query: okQuery, header: "good", opts: Options{Scopes: []string{testResource + "/Files.Read"}}, wantCode: 200, wantCall: true,
			wantScope: []string{testResource + "/Files.Read"}},
		{name: "fixed scopes of another resource", query: "api-version=2019-08-01&resource=api://other.example", header: "good",
			opts: Options{Scopes: []string{testResource + "/Files.Read"}}, wantCode: 400},
		{name: "matching client_id", query: okQuery + "&client_id=" + testAppID, header: "good", wantCode: 200, wantCall: true, wantScope: []string{testResource + "/.default"}},
		{name: "other client_id", query: okQuery + "&client_id=00000000-0000-0000-0000-000000000000", header: "good", wantCode: 400, wantCall: true},
		{name: "mi_res_id", query: okQuery + "&mi_res_id=/subscriptions/x", header: "good", wantCode: 400},
		{name: "no header", query: okQuery, wantCode: 401},
		{name: "wrong header", query: okQuery, header: "0000", wantCode: 401},
		{name: "wrong api-version", query: "api-version=2017-09-01&resource=" + testResource, header: "good", wantCode: 400},
		{name: "no resource", query: "api-version=2019-08-01", header: "good", wantCode: 400},
		{name: "POST", method: http.MethodPost, query: okQuery, header: "good", wantCode: 405},
		{name: "browser", query: okQuery, header: "good", extra: map[string]string{"Origin": "http://evil.example"}, wantCode: 403},
		{name: "outside the tree", query: okQuery, header: "good", root: outsider.Process.Pid, wantCode: 403},
		{name: "other uid", query: okQuery, header: "good", opts: Options{FindPeer: func(netip.AddrPort, netip.AddrPort) (platform.TCPPeer, error) {
			return platform.TCPPeer{UID: os.Getuid() + 1, PIDs: []int{os.Getpid()}}, nil
		}}, wantCode: 403},
		{name: "socket shared with an outsider", query: okQuery, header: "good", opts: Options{FindPeer: func(netip.AddrPort, netip.AddrPort) (platform.TCPPeer, error) {
			return platform.TCPPeer{UID: os.Getuid(), PIDs: []int{os.Getpid(), 1}}, nil // pid 1 is no descendant of ours
		}}, wantCode: 403},
		{name: "daemon refuses", query: okQuery, header: "good", daemonErr: status.Error(codes.PermissionDenied, "not attested"), wantCode: 403, wantCall: true},
		{name: "daemon rate limits", query: okQuery, header: "good", daemonErr: status.Error(codes.ResourceExhausted, "slow down"), wantCode: 429, wantCall: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := tt.root
			if root == 0 {
				root = os.Getpid()
			}
			e, rec := start(t, tt.opts, root)
			rec.err = tt.daemonErr
			hdr := map[string]string{}
			switch tt.header {
			case "":
			case "good":
				hdr[HeaderName] = secretOf(e)
			default:
				hdr[HeaderName] = tt.header
			}
			for k, v := range tt.extra {
				hdr[k] = v
			}
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			code, body := get(t, e, method, tt.query, hdr)
			if code != tt.wantCode {
				t.Fatalf("status %d, want %d (body %v)", code, tt.wantCode, body)
			}
			if called := len(rec.calls) > 0; called != tt.wantCall {
				t.Fatalf("daemon called = %v, want %v", called, tt.wantCall)
			}
			q, _ := url.ParseQuery(tt.query)
			if tt.wantCall && rec.clientIDs[0] != q.Get("client_id") {
				t.Fatalf("daemon was asked for client_id %q, want %q", rec.clientIDs[0], q.Get("client_id"))
			}
			if code != 200 {
				if body["access_token"] != "" || body["error"] == "" {
					t.Fatalf("error body %v must name an error and carry no token", body)
				}
				return
			}
			if rec.pids[0] != os.Getpid() || rec.calls[0].GetAgent() != "test-agent" || !slices.Equal(rec.calls[0].GetScopes(), tt.wantScope) {
				t.Fatalf("daemon asked for pid %d agent %q scopes %v; want pid %d, scopes %v", rec.pids[0], rec.calls[0].GetAgent(),
					rec.calls[0].GetScopes(), os.Getpid(), tt.wantScope)
			}
			want := map[string]string{"access_token": "tok-" + strings.Join(tt.wantScope, ","), "expires_on": "1900000000",
				"resource": q.Get("resource"), "token_type": "Bearer", "client_id": testAppID}
			for k, v := range want {
				if body[k] != v {
					t.Errorf("%s = %q, want %q", k, body[k], v)
				}
			}
		})
	}
}

// TestWaitsForBind: a request that arrives before the root is known is held, then served.
func TestWaitsForBind(t *testing.T) {
	needLinux(t)
	e, rec := start(t, Options{}, 0)
	done := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, e.URL()+"?api-version=2019-08-01&resource="+testResource, nil)
		req.Header.Set(HeaderName, secretOf(e))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	select {
	case c := <-done:
		t.Fatalf("answered %d before Bind", c)
	case <-time.After(200 * time.Millisecond):
	}
	e.Bind(os.Getpid())
	if c := <-done; c != 200 || len(rec.calls) != 1 {
		t.Fatalf("after Bind: status %d, %d daemon calls", c, len(rec.calls))
	}
}

func TestClosed(t *testing.T) {
	e, _ := start(t, Options{}, os.Getpid())
	url := e.URL()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.Get(url); err == nil {
		resp.Body.Close()
		t.Fatal("endpoint still answers after Close")
	}
}

// A connection nobody sends on is closed: any local user can reach the loopback port.
func TestIdleConnectionsAreClosed(t *testing.T) {
	saved := idleTimeout
	idleTimeout = 200 * time.Millisecond
	t.Cleanup(func() { idleTimeout = saved })
	e, _ := start(t, Options{}, 0)
	c, err := net.Dial("tcp4", strings.TrimSuffix(strings.TrimPrefix(e.URL(), "http://"), "/"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil { // refused (no header), kept alive
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("the idle connection was still open after 5 s")
			}
			return // closed by the endpoint
		}
	}
}
