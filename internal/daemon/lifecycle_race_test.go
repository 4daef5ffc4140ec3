package daemon_test

// The e2e tests run the daemon as a separate binary built without -race; this runs the real daemon in-process against
// the real emulator, so the race detector sees the cache, consent, broker and watcher paths under a mixed load of
// GetToken (cached, forced, claims), WatchToken, grant revocations and re-approvals.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/daemon"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	"github.com/agentidd/agentidd/platform"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

const lifecycleAgent = "race-agent"

// lifecycleDaemon starts the daemon in this process and returns a client. The test binary is both the daemon's own
// executable (so Admin calls are allowed) and the agent's bound binary.
func lifecycleDaemon(t *testing.T) *client.Conn {
	c, _ := lifecycleDaemonWith(t, lifecycleOptions{})
	return c
}

// lifecycleOptions vary the in-process daemon: its clock, extra config lines, the emulator's token lifetime.
type lifecycleOptions struct {
	clock         func() time.Time
	extraConfig   string
	tokenLifetime time.Duration
}

func lifecycleDaemonWith(t *testing.T, o lifecycleOptions) (*client.Conn, *emutest.Emulator) {
	t.Helper()
	emu := emutest.Start(t, emutest.Options{TokenLifetime: o.tokenLifetime})
	cfgPath, socket := inProcessSetup(t, emu, lifecycleAgent, o.extraConfig)
	c, _ := runInProcess(t, cfgPath, socket, o.clock)
	signIn(t, c, emu)
	return c, emu
}

// inProcessSetup writes, in a fresh directory, a config for emu that binds agent to this test binary (which is also the
// daemon's own executable, so Admin calls are allowed), and stores the blueprint secret. It returns the config's path
// and the socket.
func inProcessSetup(t *testing.T, emu *emutest.Emulator, agent, extraConfig string) (cfgPath, socket string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "aidd-race-") // short: sun_path is 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	self, sum := selfBinding(t)
	stateDir, socket := filepath.Join(dir, "state"), filepath.Join(dir, "run", "agentidd.sock")
	cfg := fmt.Sprintf(`authority = %q
client_id = %q
blueprint_app_id = %q
dev_ca_file = %q
secret_store = "file"
state_dir = %q
socket = %q
rate_limit = 100000.0
burst = 100000
%s

[[agent]]
name = %q
app_id = %q
[[agent.binding]]
exe = %q
sha256 = %q
`, emu.Authority, emutest.PublicClientID, emutest.BlueprintAppID, emu.CAFile, stateDir, socket, extraConfig,
		agent, emutest.AgentAppID, self, sum)
	cfgPath = filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	secrets, err := platform.OpenSecretStore("file", stateDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := secrets.Set(platform.BlueprintItem(emutest.BlueprintAppID), []byte(emutest.BlueprintSecret)); err != nil {
		t.Fatal(err)
	}
	return cfgPath, socket
}

// selfBinding is this test binary's path and hex SHA-256, for binding an agent to it.
func selfBinding(t *testing.T) (path, sum string) {
	t.Helper()
	path, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if path, err = filepath.EvalSymlinks(path); err != nil {
		t.Fatal(err)
	}
	exe, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(exe)
	return path, hex.EncodeToString(h[:])
}

// runInProcess runs the daemon on cfgPath in this process until stop (or the test's end) and returns a client once it
// answers. stop may be called more than once.
func runInProcess(t *testing.T, cfgPath, socket string, clock func() time.Time) (c *client.Conn, stop func()) {
	t.Helper()
	return runInProcessLogging(t, cfgPath, socket, clock, io.Discard)
}

// runInProcessLogging is runInProcess with the daemon's log written to logTo.
func runInProcessLogging(t *testing.T, cfgPath, socket string, clock func() time.Time, logTo io.Writer) (c *client.Conn, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, daemon.Options{ConfigPath: cfgPath, Clock: clock, Log: slog.New(slog.NewTextHandler(logTo, nil))})
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("daemon.Run: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Error("daemon did not stop")
			}
		})
	}
	t.Cleanup(stop)
	var err error
	deadline := time.Now().Add(15 * time.Second)
	for {
		if c, err = client.Dial(socket); err == nil {
			if _, err = c.Admin.Status(context.Background(), &agentidv1.StatusRequest{}); err == nil {
				break
			}
			c.Close()
		}
		select {
		case err := <-done:
			t.Fatalf("daemon exited at start: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not come up: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(func() { c.Close() })
	return c, stop
}

// signIn runs `agentidd login` through the Admin API and the emulator's device-code page.
func signIn(t *testing.T, c *client.Conn, emu *emutest.Emulator) {
	t.Helper()
	stream, err := c.Admin.Login(context.Background(), &agentidv1.LoginRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		if ev.GetUserCode() != "" {
			if err := emu.CompleteDeviceCode(ev.GetVerificationUri(), ev.GetUserCode(), emutest.DefaultUserUPN, emutest.DefaultUserPassword); err != nil {
				t.Fatal(err)
			}
		}
		if ev.GetUserUpn() != "" {
			return
		}
	}
}

// lifecycleApprover approves every pending consent request for an hour, until ctx ends.
func lifecycleApprover(ctx context.Context, c *client.Conn) { lifecycleApproverFor(ctx, c, time.Hour) }

// lifecycleApproverFor is lifecycleApprover with grants of length d (1h, 8h or 7d).
func lifecycleApproverFor(ctx context.Context, c *client.Conn, d time.Duration) {
	for ctx.Err() == nil {
		list, err := c.Admin.ListConsentRequests(ctx, &agentidv1.ListConsentRequestsRequest{})
		if err == nil {
			for _, r := range list.GetRequests() {
				_, _ = c.Admin.DecideConsent(ctx, &agentidv1.DecideConsentRequest{Id: r.GetId(), Allow: true, Duration: durationpb.New(d)})
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLifecycleMixedLoadRace(t *testing.T) {
	if testing.Short() {
		t.Skip("30 s of load")
	}
	c := lifecycleDaemon(t)
	const loadFor = 30 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), loadFor)
	defer cancel()

	var wg sync.WaitGroup
	var served, forced, revokedEvents, tokenEvents, revocations atomic.Int64
	var unexpected sync.Map // code/reason → first message

	wg.Add(1)
	go func() { defer wg.Done(); lifecycleApprover(ctx, c) }()

	request := func(i int) *agentidv1.GetTokenRequest {
		req := &agentidv1.GetTokenRequest{Agent: lifecycleAgent, Scopes: []string{emutest.ResourceScopeRead}, ConsentWait: durationpb.New(2 * time.Second)}
		switch i % 20 {
		case 0:
			req.ForceRefresh = true
		case 1, 2:
			req.Claims = fmt.Sprintf(`{"access_token":{"nbf":{"essential":true,"value":"%d"}}}`, 1700000000+i%3)
		}
		return req
	}
	// expected are the answers a client can get while its grant is revoked under it: waiting for consent again, or
	// ABORTED/GRANT_REVOKED when the fetch it joined was discarded because of the revocation. INTERNAL or
	// IDP_CONSENT_REQUIRED here would be wrong answers (they were, before the broker mapped the race) and fail the test.
	var racedRevocation atomic.Int64
	expected := func(err error) bool {
		switch client.Reason(err) {
		case "CONSENT_PENDING":
			return true
		case "GRANT_REVOKED":
			racedRevocation.Add(1)
			return status.Code(err) == codes.Aborted
		}
		// The load's own deadline ends it: a call still waiting on an exchange then is answered UNAVAILABLE shortly before
		// that deadline (at most 250 ms), or sees the deadline itself.
		if deadline, _ := ctx.Deadline(); time.Until(deadline) < 500*time.Millisecond &&
			status.Code(err) == codes.Unavailable && client.Reason(err) == "IDP_UNREACHABLE" {
			return true
		}
		return errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded || status.Code(err) == codes.Canceled
	}
	note := func(err error) {
		key := fmt.Sprintf("%v/%s", status.Code(err), client.Reason(err))
		unexpected.LoadOrStore(key, err.Error())
	}

	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; ctx.Err() == nil; i += 8 {
				req := request(i)
				resp, err := c.Agent.GetToken(ctx, req)
				switch {
				case err == nil && resp.GetAccessToken() != "":
					served.Add(1)
					if req.ForceRefresh {
						forced.Add(1)
					}
				case err != nil && !expected(err):
					note(err)
				}
			}
		}()
	}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				stream, err := c.Agent.WatchToken(ctx, &agentidv1.GetTokenRequest{Agent: lifecycleAgent, Scopes: []string{emutest.ResourceScopeRead}, ConsentWait: durationpb.New(2 * time.Second)})
				if err != nil {
					continue
				}
				for {
					ev, err := stream.Recv()
					if err != nil {
						if !expected(err) && err != io.EOF {
							note(err)
						}
						break
					}
					if ev.GetRevoked() != nil {
						revokedEvents.Add(1)
					} else if ev.GetToken() != nil {
						tokenEvents.Add(1)
					}
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			time.Sleep(300 * time.Millisecond)
			list, err := c.Admin.ListGrants(ctx, &agentidv1.ListGrantsRequest{})
			if err != nil {
				continue
			}
			for _, g := range list.GetGrants() {
				if _, err := c.Admin.RevokeGrant(ctx, &agentidv1.RevokeGrantRequest{Id: g.GetId()}); err == nil {
					revocations.Add(1)
				}
			}
			_, _ = c.Admin.Status(ctx, &agentidv1.StatusRequest{})
		}
	}()
	wg.Wait()

	t.Logf("served %d (forced %d), watch events: %d tokens, %d revocations; %d grants revoked; %d fetches raced a revocation",
		served.Load(), forced.Load(), tokenEvents.Load(), revokedEvents.Load(), revocations.Load(), racedRevocation.Load())
	if served.Load() == 0 || forced.Load() == 0 || tokenEvents.Load() == 0 || revokedEvents.Load() == 0 || revocations.Load() == 0 {
		t.Error("the load did not exercise every path")
	}
	unexpected.Range(func(k, v any) bool {
		t.Errorf("unexpected answer under load: %s: %s", k, v)
		return true
	})
}
