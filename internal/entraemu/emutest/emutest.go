// Package emutest starts the real entra-emulator binary for tests in any package, and drives its admin API.
//
//	emu := emutest.Start(t, emutest.Options{})
//	client := emu.HTTPClient() // trusts the emulator's CA
//	pub, _ := public.New(emutest.PublicClientID, public.WithAuthority(emu.Authority),
//		public.WithHTTPClient(client), public.WithInstanceDiscovery(false))
//
// The binary is built once per test process (go build, cached in a temporary directory).
package emutest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/agentidd/agentidd/internal/entraemu"
)

// Ids of the embedded default directory.
const (
	DefaultTenantID     = "7f3c2a10-5b8e-4c1d-9a6f-2e4b8d0c1a93"
	DefaultTenantName   = "contoso"
	DefaultUserUPN      = "ada@contoso.example"
	DefaultUserPassword = "correct-horse-battery"
	DefaultUserOID      = "b2c4e6f8-1a3b-4c5d-8e7f-9a0b1c2d3e4f"
	DefaultUserName     = "Ada Lovelace"
	PublicClientID      = "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a"
	BlueprintAppID      = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
	BlueprintSecret     = "blueprint-demo-secret-do-not-use"
	BlueprintAppIDURI   = "api://a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
	BlueprintUserScope  = BlueprintAppIDURI + "/access_as_user"
	AgentAppID          = "c7d8e9f0-a1b2-4c3d-9e4f-5a6b7c8d9e0f"
	ResourceAppID       = "e5f6a7b8-c9d0-4e1f-8a2b-3c4d5e6f7a8b"
	ResourceAppIDURI    = "api://files.contoso.example"
	ResourceScopeRead   = ResourceAppIDURI + "/Files.Read"
	ResourceScopeWrite  = ResourceAppIDURI + "/Files.ReadWrite"
	ResourceAppRole     = "Files.Read.All"
	TokenExchangeScope  = "api://AzureADTokenExchange/.default"
	TokenExchangeAppID  = entraemu.TokenExchangeAppID
)

// Fault and Counters are the admin API's types.
type (
	Fault    = entraemu.Fault
	Counters = entraemu.Counters
)

// Options configure Start.
type Options struct {
	DirectoryFile string        // empty: the embedded default directory
	TokenLifetime time.Duration // zero: the emulator's default (1h)
	StateDir      string        // empty: a t.TempDir()
}

// Emulator is one running entra-emulator process.
type Emulator struct {
	URL, Authority, Tenant, CAFile, AdminURL, AdminToken string
	PID                                                  int

	tb       testing.TB
	opts     Options
	listen   string
	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
	stderr   *LockedBuffer
	stdin    io.WriteCloser // held open for the emulator's life; see start
	client   *http.Client
	stopOnce bool
}

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Build compiles cmd/entra-emulator once per test process and returns the binary's path.
func Build(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "entraemu-bin-")
		if err != nil {
			buildErr = err
			return
		}
		name := "entra-emulator"
		if filepath.Separator == '\\' {
			name += ".exe"
		}
		buildPath = filepath.Join(dir, name)
		out, err := exec.Command("go", "build", "-o", buildPath, "github.com/agentidd/agentidd/cmd/entra-emulator").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build entra-emulator: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return buildPath
}

// RemoveBuild deletes the binary Build made. Call it from TestMain after m.Run: a test process has no other hook at its
// end, and each run would otherwise leave a binary in the temp dir.
func RemoveBuild() {
	if buildPath != "" {
		_ = os.RemoveAll(filepath.Dir(buildPath))
	}
}

// Main is a TestMain for packages whose tests start the emulator: it runs them, removes the binary, and exits.
func Main(m *testing.M) {
	code := m.Run()
	RemoveBuild()
	os.Exit(code)
}

// Start runs the emulator and stops it when the test ends.
func Start(tb testing.TB, opts Options) *Emulator {
	tb.Helper()
	if opts.StateDir == "" {
		opts.StateDir = tb.TempDir()
	}
	e := &Emulator{tb: tb, opts: opts, listen: "127.0.0.1:0"}
	if err := e.start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(e.Stop)
	return e
}

func (e *Emulator) start() error {
	bin := Build(e.tb)
	args := []string{"--listen", e.listen, "--state-dir", e.opts.StateDir}
	if e.opts.DirectoryFile != "" {
		args = append(args, "--directory", e.opts.DirectoryFile)
	}
	if e.opts.TokenLifetime > 0 {
		args = append(args, "--token-lifetime", e.opts.TokenLifetime.String())
	}
	cmd := exec.Command(bin, args...)
	// If this test process dies without Stop, the OS closes the pipe and the emulator exits rather than linger.
	cmd.Env = append(os.Environ(), "ENTRA_EMULATOR_EXIT_ON_STDIN_EOF=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	e.stderr = &LockedBuffer{}
	cmd.Stderr = e.stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting entra-emulator: %w", err)
	}
	done := make(chan struct{})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() { _ = cmd.Wait(); close(done) }()
	var line string
	select {
	case l, ok := <-lines:
		if !ok {
			<-done
			return fmt.Errorf("entra-emulator exited before it was ready; stderr:\n%s", e.stderr.String())
		}
		line = l
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		return fmt.Errorf("entra-emulator not ready after 60s; stderr:\n%s", e.stderr.String())
	}
	var r entraemu.Ready
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		_ = cmd.Process.Kill()
		return fmt.Errorf("entra-emulator ready line %q: %w", line, err)
	}
	pem, err := os.ReadFile(r.CAFile)
	if err != nil {
		_ = cmd.Process.Kill()
		return fmt.Errorf("reading CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		_ = cmd.Process.Kill()
		return errors.New("CA file holds no certificate")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.URL, e.Authority, e.Tenant, e.CAFile, e.AdminURL, e.AdminToken, e.PID = r.URL, r.Authority, r.Tenant, r.CAFile, r.AdminURL, r.AdminToken, r.PID
	e.listen = strings.TrimPrefix(r.URL, "https://")
	e.cmd, e.done, e.stopOnce, e.stdin = cmd, done, false, stdin
	e.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		DialContext:     (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}}
	return nil
}

// Stop sends SIGTERM and waits for a clean exit (it kills the process after 10 s). Calling it twice is fine.
func (e *Emulator) Stop() {
	e.mu.Lock()
	if e.stopOnce || e.cmd == nil {
		e.mu.Unlock()
		return
	}
	e.stopOnce = true
	cmd, done, stdin := e.cmd, e.done, e.stdin
	e.mu.Unlock()
	defer stdin.Close()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		_ = cmd.Process.Kill()
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		e.tb.Errorf("entra-emulator did not stop within 10s of SIGTERM; stderr:\n%s", e.stderr.String())
		return
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		e.tb.Errorf("entra-emulator exited with %d; stderr:\n%s", code, e.stderr.String())
	}
}

// Restart stops the emulator and starts it again on the same port with the same state directory, so the URL, CA,
// admin token, signing keys, refresh tokens and directory changes are kept. Pending device codes, authorization
// codes, faults and counters are not. If another process took the port in between, the test fails.
func (e *Emulator) Restart() {
	e.tb.Helper()
	e.Stop()
	if err := e.start(); err != nil {
		e.tb.Fatal(err)
	}
}

// Stderr returns what the emulator logged so far.
func (e *Emulator) Stderr() string { return e.stderr.String() }

// HTTPClient trusts the emulator's CA and nothing else.
func (e *Emulator) HTTPClient() *http.Client {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.client
}

// admin calls the admin API; out may be nil.
func (e *Emulator) admin(method, op string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, e.AdminURL+"/"+op, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+e.AdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.HTTPClient().Do(req)
	if err != nil {
		return fmt.Errorf("admin %s: %w", op, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != 200 {
		return fmt.Errorf("admin %s: %s: %s", op, resp.Status, bytes.TrimSpace(b))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

func (e *Emulator) must(err error) {
	if err != nil {
		e.tb.Helper()
		e.tb.Fatal(err)
	}
}

// Counters reads the request counters.
func (e *Emulator) Counters() (Counters, error) {
	var c Counters
	err := e.admin(http.MethodGet, "counters", nil, &c)
	return c, err
}

// ResetCounters zeroes the counters.
func (e *Emulator) ResetCounters() { e.must(e.admin(http.MethodPost, "counters/reset", nil, nil)) }

// InjectFault adds a fault; see Fault.
func (e *Emulator) InjectFault(f Fault) error { return e.admin(http.MethodPost, "faults", f, nil) }

// ClearFaults removes all faults and releases hung requests.
func (e *Emulator) ClearFaults() { e.must(e.admin(http.MethodPost, "faults/clear", nil, nil)) }

// RevokeUserSessions invalidates every refresh token of the user (AADSTS50173 on next use).
func (e *Emulator) RevokeUserSessions(upn string) {
	e.must(e.admin(http.MethodPost, "users/revoke", map[string]any{"upn": upn}, nil))
}

// SetUserEnabled disables (AADSTS50057) or enables a user.
func (e *Emulator) SetUserEnabled(upn string, enabled bool) {
	e.must(e.admin(http.MethodPost, "users/enabled", map[string]any{"upn": upn, "enabled": enabled}, nil))
}

// SetUserMFA sets "" (none), "required" (AADSTS50076) or "enrollment" (AADSTS50079) for a user.
func (e *Emulator) SetUserMFA(upn, mfa string) {
	e.must(e.admin(http.MethodPost, "users/mfa", map[string]any{"upn": upn, "mfa": mfa}, nil))
}

// RequireReauth marks the user as needing to sign in again (a CAE critical event): silent and OBO requests answer
// interaction_required with a claims challenge until the user signs in interactively.
func (e *Emulator) RequireReauth(upn string) {
	e.must(e.admin(http.MethodPost, "users/reauth", map[string]any{"upn": upn}, nil))
}

// SetAgentEnabled disables (AADSTS7000112) or enables an app; any app id works, agent identities included.
func (e *Emulator) SetAgentEnabled(appID string, enabled bool) {
	e.must(e.admin(http.MethodPost, "apps/enabled", map[string]any{"app_id": appID, "enabled": enabled}, nil))
}

// WithdrawConsent removes client's consent for scopes (all when none are given) on resource (both app ids).
func (e *Emulator) WithdrawConsent(client, resource string, scopes ...string) {
	e.must(e.admin(http.MethodPost, "consents/withdraw", map[string]any{"client": client, "resource": resource, "scopes": scopes}, nil))
}

// GrantConsent adds an admin consent.
func (e *Emulator) GrantConsent(client, resource string, scopes ...string) {
	e.must(e.admin(http.MethodPost, "consents/grant", map[string]any{"client": client, "resource": resource, "scopes": scopes}, nil))
}

// SetTokenLifetime changes the lifetime of access tokens issued from now on (1m..24h).
func (e *Emulator) SetTokenLifetime(d time.Duration) {
	e.must(e.admin(http.MethodPost, "token-lifetime", map[string]any{"lifetime": d.String()}, nil))
}

// ShiftClock moves the emulator's clock by d (cumulative; negative goes back).
func (e *Emulator) ShiftClock(d time.Duration) {
	e.must(e.admin(http.MethodPost, "clock/shift", map[string]any{"by": d.String()}, nil))
}

// RotateKeys makes a new signing key; the previous one stays in the JWKS. It returns the new key id.
func (e *Emulator) RotateKeys() string {
	var out struct {
		Kid string `json:"kid"`
	}
	e.must(e.admin(http.MethodPost, "keys/rotate", nil, &out))
	return out.Kid
}

var formMessage = regexp.MustCompile(`<p id="message">([^<]*)</p>`)

// CompleteDeviceCode signs in on the device-code page the way a person would: GET the page, then POST its form.
func (e *Emulator) CompleteDeviceCode(verificationURI, userCode, username, password string) error {
	c := e.HTTPClient()
	resp, err := c.Get(verificationURI)
	if err != nil {
		return fmt.Errorf("opening %s: %w", verificationURI, err)
	}
	page, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(page, []byte(`name="user_code"`)) {
		return fmt.Errorf("device code page: %s", resp.Status)
	}
	form := url.Values{"user_code": {userCode}, "username": {username}, "password": {password}, "action": {"signin"}}
	resp, err = c.PostForm(verificationURI, form)
	if err != nil {
		return fmt.Errorf("posting sign-in form: %w", err)
	}
	defer resp.Body.Close()
	page, _ = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == 200 && bytes.Contains(page, []byte("You are signed in")) {
		return nil
	}
	msg := resp.Status
	if m := formMessage.FindSubmatch(page); m != nil {
		msg += ": " + html.UnescapeString(string(m[1]))
	}
	return fmt.Errorf("device code sign-in refused: %s", msg)
}

var (
	formAction  = regexp.MustCompile(`<form method="post" action="([^"]*)">`)
	hiddenInput = regexp.MustCompile(`<input type="hidden" name="([^"]*)" value="([^"]*)">`)
)

// parseForm reads the emulator's (or its form_post page's) form: the action and the hidden fields.
func parseForm(page []byte) (string, url.Values, bool) {
	m := formAction.FindSubmatch(page)
	if m == nil {
		return "", nil, false
	}
	v := url.Values{}
	for _, h := range hiddenInput.FindAllSubmatch(page, -1) {
		v.Set(html.UnescapeString(string(h[1])), html.UnescapeString(string(h[2])))
	}
	return html.UnescapeString(string(m[1])), v, true
}

// CompleteAuthCode signs in on the authorization page the way a browser would for MSAL's AcquireTokenInteractive
// (use it as public.WithOpenURL): GET the authorize URL, POST the sign-in form, then deliver the answer to the
// redirect URI, following a 302 (response_mode=query) or posting the auto-submit form (response_mode=form_post).
func (e *Emulator) CompleteAuthCode(authURL, username, password string) error {
	c := e.HTTPClient()
	resp, err := c.Get(authURL)
	if err != nil {
		return fmt.Errorf("opening the authorize page: %w", err)
	}
	page, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	action, form, ok := parseForm(page)
	if resp.StatusCode != 200 || !ok {
		return fmt.Errorf("authorize page: %s", resp.Status)
	}
	form.Set("username", username)
	form.Set("password", password)
	form.Set("action", "signin")
	resp, err = c.PostForm(e.URL+action, form)
	if err != nil {
		return fmt.Errorf("posting the sign-in form: %w", err)
	}
	page, _ = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if resp.StatusCode != 200 || bytes.Contains(page, []byte(`name="password"`)) {
		msg := "sign-in refused: " + resp.Status
		if m := formMessage.FindSubmatch(page); m != nil {
			msg += ": " + html.UnescapeString(string(m[1]))
		}
		return errors.New(msg)
	}
	if next, fields, ok := parseForm(page); ok {
		resp, err = c.PostForm(next, fields)
		if err != nil {
			return fmt.Errorf("posting the response to %s: %w", next, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("redirect URI answered %s", resp.Status)
		}
	}
	return nil
}

// LockedBuffer collects a process's output (a child's stderr, a daemon's log) while tests read it: a bytes.Buffer
// safe for one writer and concurrent readers.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
