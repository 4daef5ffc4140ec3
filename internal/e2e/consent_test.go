package e2e

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/consent"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	"github.com/agentidd/agentidd/platform"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// The consent tests drive the real daemon's prompts through a notification server this test implements on a private
// session bus, and the terminal path through the real CLI.

const (
	consentNotifyName  = "org.freedesktop.Notifications"
	consentNotifyPath  = dbus.ObjectPath("/org/freedesktop/Notifications")
	consentNotifyIface = "org.freedesktop.Notifications"
	consentWhy         = "e2e: read the files you shared this week"
)

var consentActions = []string{"allow", "Allow", "deny", "Deny", "details", "Details"}

type consentNotification struct {
	ID            uint32
	Summary, Body string
	Actions       []string
}

// consentNotifier implements org.freedesktop.Notifications (actions, no markup, so the body arrives as built).
type consentNotifier struct {
	conn   *dbus.Conn
	mu     sync.Mutex
	next   uint32
	count  atomic.Int32
	shown  chan consentNotification
	closed chan uint32
}

func (n *consentNotifier) Notify(_ string, replaces uint32, _, summary, body string, actions []string, _ map[string]dbus.Variant, _ int32) (uint32, *dbus.Error) {
	n.mu.Lock()
	id := replaces
	if id == 0 {
		n.next++
		id = n.next
	}
	n.mu.Unlock()
	n.count.Add(1)
	select {
	case n.shown <- consentNotification{ID: id, Summary: summary, Body: body, Actions: actions}:
	default: // the count still tells the test
	}
	return id, nil
}

func (n *consentNotifier) CloseNotification(id uint32) *dbus.Error {
	select {
	case n.closed <- id:
	default:
	}
	return nil
}

func (n *consentNotifier) GetCapabilities() ([]string, *dbus.Error) { return []string{"actions"}, nil }

// act clicks an action of notification id, as the desktop would.
func (n *consentNotifier) act(t *testing.T, id uint32, action string) {
	t.Helper()
	if err := n.conn.Emit(consentNotifyPath, consentNotifyIface+".ActionInvoked", id, action); err != nil {
		t.Fatal(err)
	}
}

// nextShown waits for the next notification.
func (n *consentNotifier) nextShown(t *testing.T, what string) consentNotification {
	t.Helper()
	select {
	case s := <-n.shown:
		return s
	case <-time.After(15 * time.Second):
		t.Fatalf("%s: no notification appeared", what)
	}
	return consentNotification{}
}

// none asserts that no notification appears for a while.
func (n *consentNotifier) none(t *testing.T, what string) {
	t.Helper()
	select {
	case s := <-n.shown:
		t.Fatalf("%s: unexpected prompt %q", what, s.Summary)
	case <-time.After(300 * time.Millisecond):
	}
}

func (n *consentNotifier) waitClosed(t *testing.T, id uint32, what string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case got := <-n.closed:
			if got == id {
				return
			}
		case <-deadline:
			t.Fatalf("%s: notification %d was not closed", what, id)
		}
	}
}

// consentDesktop starts a private session bus with the test's notification server on it and points the daemon
// (started later by newEnv, which passes os.Environ on) at it.
func consentDesktop(t *testing.T) *consentNotifier {
	t.Helper()
	bin, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Skip("dbus-daemon not installed (apt-get install -y dbus)")
	}
	cmd := exec.Command(bin, "--session", "--print-address", "--nofork")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the bus address: %v", err)
	}
	addr = strings.TrimSpace(addr)
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	n := &consentNotifier{conn: conn, shown: make(chan consentNotification, 100), closed: make(chan uint32, 100)}
	if err := conn.Export(n, consentNotifyPath, consentNotifyIface); err != nil {
		t.Fatal(err)
	}
	if reply, err := conn.RequestName(consentNotifyName, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName = %v, %v", reply, err)
	}
	t.Setenv("DBUS_SESSION_BUS_ADDRESS", addr)
	t.Setenv("DISPLAY", "") // never a real zenity dialog
	t.Setenv("WAYLAND_DISPLAY", "")
	return n
}

// consentExpectText is what the daemon must show for a request of the test binary (or another bound program).
func consentExpectText(t *testing.T, display, exe string, scopes []string, duration, why string, chain []string) platform.PromptText {
	t.Helper()
	return platform.BuildPromptText(display, emutest.AgentAppID, exe, sha256File(t, exe)[:12], emutest.ResourceAppIDURI,
		consent.NormalizeScopes(scopes), consent.ModeOBO, duration, why, chain)
}

func consentSelf(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if self, err = filepath.EvalSymlinks(self); err != nil {
		t.Fatal(err)
	}
	return self
}

func consentCheckShown(t *testing.T, got consentNotification, want platform.PromptText) {
	t.Helper()
	if got.Summary != want.Title {
		t.Errorf("prompt title = %q, want %q", got.Summary, want.Title)
	}
	if got.Body != want.Body {
		t.Errorf("prompt body =\n%s\nwant (platform.BuildPromptText):\n%s", got.Body, want.Body)
	}
	if !slices.Equal(got.Actions, consentActions) {
		t.Errorf("prompt actions = %v, want %v", got.Actions, consentActions)
	}
}

type consentResult struct {
	tok *client.Issued
	err error
}

// consentAsk asks for a token in the background, waiting up to 20 s for consent.
func consentAsk(c *client.Conn, scopes []string, opts ...client.Option) <-chan consentResult {
	ch := make(chan consentResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		opts = append([]client.Option{client.WithConsentWait(20 * time.Second), client.WithJustification(consentWhy)}, opts...)
		tok, err := c.Token(ctx, testAgent, scopes, opts...)
		ch <- consentResult{tok, err}
	}()
	return ch
}

func consentGot(t *testing.T, ch <-chan consentResult, what string) *client.Issued {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("%s: %v", what, r.err)
		}
		return r.tok
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no answer", what)
	}
	return nil
}

// consentNow asks without waiting for consent.
func consentNow(c *client.Conn, scopes []string, opts ...client.Option) (*client.Issued, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Token(ctx, testAgent, scopes, append([]client.Option{client.WithJustification(consentWhy)}, opts...)...)
}

func consentWantReason(t *testing.T, err error, code codes.Code, reason, what string) {
	t.Helper()
	if status.Code(err) != code || client.Reason(err) != reason {
		t.Fatalf("%s: err = %v (reason %q), want %s/%s", what, err, client.Reason(err), code, reason)
	}
}

var consentGrantRE = regexp.MustCompile(`(?m)^(g_[0-9a-f]+)\s`)

func consentGrantIDs(t *testing.T, e *env) []string {
	t.Helper()
	var ids []string
	for _, m := range consentGrantRE.FindAllStringSubmatch(e.cli("grants"), -1) {
		ids = append(ids, m[1])
	}
	return ids
}

func TestConsentDesktopPrompt(t *testing.T) {
	n := consentDesktop(t)
	e := newEnv(t, envOptions{})
	// The tenant side: the agent identity may use both scopes; what is tested here is the user's local consent.
	e.emu.GrantConsent(emutest.AgentAppID, emutest.ResourceAppID, "Files.Read", "Files.ReadWrite")
	e.login()
	c := e.conn()
	self := consentSelf(t)
	read := []string{emutest.ResourceScopeRead}
	readWrite := []string{emutest.ResourceScopeRead, emutest.ResourceScopeWrite}

	// 50 concurrent identical requests: one prompt, showing the facts as BuildPromptText words them; one click.
	const callers = 50
	results := make([]<-chan consentResult, callers)
	for i := range results {
		results[i] = consentAsk(c, read)
	}
	shown := n.nextShown(t, "first request")
	consentCheckShown(t, shown, consentExpectText(t, "Test agent", self, read, consent.DurationText(consent.OneHour, ""), consentWhy, nil))
	for _, want := range []string{"“Test agent”", self, emutest.ResourceAppIDURI, emutest.ResourceScopeRead, "act as you (on-behalf-of)",
		"The agent says (its own words, not verified by agentidd): “" + consentWhy + "”"} {
		if !strings.Contains(shown.Body+shown.Summary, want) {
			t.Errorf("prompt does not show %q", want)
		}
	}
	time.Sleep(300 * time.Millisecond) // let every caller join the open request before the click
	n.act(t, shown.ID, "allow")
	var grant string
	for i, ch := range results {
		tok := consentGot(t, ch, "concurrent caller")
		if i == 0 {
			grant = tok.GrantID
		}
		if tok.AccessToken == "" || tok.GrantID != grant || grant == "" {
			t.Fatalf("caller %d: token %v grant %q, want grant %q", i, tok.AccessToken != "", tok.GrantID, grant)
		}
	}
	if got := n.count.Load(); got != 1 {
		t.Fatalf("%d concurrent identical requests made %d prompts, want 1", callers, got)
	}
	n.waitClosed(t, shown.ID, "allowed prompt")

	// The same scopes again are covered: no prompt, from the cache.
	tok, err := consentNow(c, read)
	if err != nil || !tok.FromCache || tok.GrantID != grant {
		t.Fatalf("covered request: %v (from cache %v, grant %v)", err, tok != nil && tok.FromCache, tok)
	}
	n.none(t, "covered request")

	// More scopes than granted: a new prompt.
	ch := consentAsk(c, readWrite)
	shown = n.nextShown(t, "superset")
	consentCheckShown(t, shown, consentExpectText(t, "Test agent", self, readWrite, consent.DurationText(consent.OneHour, ""), consentWhy, nil))
	n.act(t, shown.ID, "allow")
	wide := consentGot(t, ch, "superset after allow")
	if wide.GrantID == grant {
		t.Fatal("superset served under the narrower grant")
	}
	// A subset of the wider grant: covered.
	if tok, err := consentNow(c, []string{emutest.ResourceScopeWrite}); err != nil || tok.GrantID != wide.GrantID {
		t.Fatalf("subset of the wide grant: %v %v", tok, err)
	}
	n.none(t, "subset")

	// Revoking through the CLI purges before it returns: a watcher hears it, and the next request prompts again.
	if ids := consentGrantIDs(t, e); !slices.Contains(ids, grant) || !slices.Contains(ids, wide.GrantID) {
		t.Fatalf("agentidd grants lists %v, want %s and %s", ids, grant, wide.GrantID)
	}
	revoked := consentWatchRevocation(t, c, readWrite, "")
	out := e.cli("grants", "revoke", wide.GrantID)
	// Two tokens came from the wide grant: Read+Write and the Write subset.
	if !strings.Contains(out, "revoked "+wide.GrantID) || !strings.Contains(out, "2 token(s) purged") {
		t.Fatalf("grants revoke said %q", out)
	}
	select {
	case reason := <-revoked:
		if reason == "" {
			t.Fatal("watch stream ended without a revocation")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WatchToken got no revocation")
	}
	if ids := consentGrantIDs(t, e); slices.Contains(ids, wide.GrantID) {
		t.Fatalf("revoked grant still listed: %v", ids)
	}

	// Deny: PERMISSION_DENIED/CONSENT_DENIED, and the cool-down answers at once without asking again.
	ch = consentAsk(c, readWrite)
	shown = n.nextShown(t, "after revoke")
	n.act(t, shown.ID, "deny")
	select {
	case r := <-ch:
		consentWantReason(t, r.err, codes.PermissionDenied, "CONSENT_DENIED", "denied request")
	case <-time.After(15 * time.Second):
		t.Fatal("denied request: no answer")
	}
	start := time.Now()
	_, err = consentNow(c, readWrite, client.WithConsentWait(20*time.Second))
	consentWantReason(t, err, codes.PermissionDenied, "CONSENT_DENIED", "request in the cool-down")
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("request in the cool-down took %v: it should fail at once", d)
	}
	n.none(t, "request in the cool-down")

	// `agentidd consent reset` forgets the denial; this time the user answers in the terminal, which closes the prompt.
	e.cli("consent", "reset")
	ch = consentAsk(c, readWrite)
	shown = n.nextShown(t, "after reset")
	e.approvePending("1h")
	consentGot(t, ch, "approved in the terminal")
	n.waitClosed(t, shown.ID, "prompt answered in the terminal")
	if got := n.count.Load(); got != 4 {
		t.Fatalf("prompts = %d, want 4 (first, superset, after revoke, after reset)", got)
	}
}

// consentWatchRevocation opens a WatchToken stream and returns a channel that gets the revocation reason ("" if the
// stream ended otherwise).
func consentWatchRevocation(t *testing.T, c *client.Conn, scopes []string, task string) <-chan string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := c.Agent.WatchToken(ctx, &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: scopes, TaskId: task})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := stream.Recv(); err != nil || ev.GetToken() == nil {
		t.Fatalf("first watch event %v: %v", ev, err)
	}
	out := make(chan string, 1)
	go func() {
		for {
			ev, err := stream.Recv()
			if err != nil {
				out <- ""
				return
			}
			if r := ev.GetRevoked(); r != nil {
				out <- r.GetReason()
				return
			}
		}
	}()
	return out
}

func TestConsentApproveOnlyFromAgentidd(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()
	c := e.conn()
	_, err := consentNow(c, []string{emutest.ResourceScopeRead})
	consentWantReason(t, err, codes.FailedPrecondition, "CONSENT_PENDING", "first request without waiting")
	id := client.Metadata(err)["request_id"]
	if id == "" {
		t.Fatalf("CONSENT_PENDING without a request_id: %v", err)
	}

	// The test binary is a bound agent, but not agentidd: it cannot decide, list, reset or revoke.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	calls := map[string]error{}
	_, calls["DecideConsent"] = c.Admin.DecideConsent(ctx, &agentidv1.DecideConsentRequest{Id: id, Allow: true})
	_, calls["ListConsentRequests"] = c.Admin.ListConsentRequests(ctx, &agentidv1.ListConsentRequestsRequest{})
	_, calls["ResetConsent"] = c.Admin.ResetConsent(ctx, &agentidv1.ResetConsentRequest{})
	_, calls["RevokeGrant"] = c.Admin.RevokeGrant(ctx, &agentidv1.RevokeGrantRequest{Id: "g_0000000000000000"})
	for name, err := range calls {
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("Admin.%s from the test binary: %v, want PERMISSION_DENIED", name, err)
		}
	}
	// Still pending, and still not granted.
	if out := e.cli("consent", "list"); !strings.Contains(out, "request "+id+":") {
		t.Fatalf("request %s no longer pending after a refused decision:\n%s", id, out)
	}
	_, err = consentNow(c, []string{emutest.ResourceScopeRead})
	consentWantReason(t, err, codes.FailedPrecondition, "CONSENT_PENDING", "after the refused decision")

	// The agentidd binary can.
	if out := e.cli("consent", "approve", id, "--for", "1h"); !strings.Contains(out, "approved: grant g_") {
		t.Fatalf("consent approve said %q", out)
	}
	if _, err := consentNow(c, []string{emutest.ResourceScopeRead}); err != nil {
		t.Fatalf("after approval by agentidd: %v", err)
	}
}

func TestConsentTaskGrantEndsAtEndTask(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()
	c := e.conn()
	read := []string{emutest.ResourceScopeRead}
	ch := consentAsk(c, read, client.WithTask("task-end"))
	e.approvePending("") // no --for on a task request: this task only
	tok := consentGot(t, ch, "task request")
	if out := e.cli("grants"); !strings.Contains(out, tok.GrantID) || !strings.Contains(out, "task=task-end") {
		t.Fatalf("grants does not list the task grant %s:\n%s", tok.GrantID, out)
	}
	if _, err := consentNow(c, read, client.WithTask("task-end")); err != nil {
		t.Fatalf("same task again: %v", err)
	}
	_, err := consentNow(c, read, client.WithTask("task-other"))
	consentWantReason(t, err, codes.FailedPrecondition, "CONSENT_PENDING", "another task")

	revoked := consentWatchRevocation(t, c, read, "task-end")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Agent.EndTask(ctx, &agentidv1.EndTaskRequest{TaskId: "task-end"})
	if err != nil || !slices.Contains(resp.GetRevokedGrantIds(), tok.GrantID) {
		t.Fatalf("EndTask = %v, %v; want grant %s revoked", resp.GetRevokedGrantIds(), err, tok.GrantID)
	}
	select {
	case reason := <-revoked:
		if reason == "" {
			t.Fatal("task watcher ended without a revocation")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("task watcher got no revocation")
	}
	if slices.Contains(consentGrantIDs(t, e), tok.GrantID) {
		t.Fatal("task grant still listed after EndTask")
	}
	_, err = consentNow(c, read, client.WithTask("task-end"))
	consentWantReason(t, err, codes.FailedPrecondition, "CONSENT_PENDING", "ended task asks again")
}

func TestConsentTaskGrantEndsWhenItsProcessExits(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()
	agent := exec.Command(e.demo, "-task", "task-exit", "-consent-wait", "20s")
	agent.Env = e.environ()
	var out bytes.Buffer
	agent.Stdout, agent.Stderr = &out, &out
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	e.approvePending("")
	if err := agent.Wait(); err != nil {
		t.Fatalf("demo-agent: %v\n%s\ndaemon log:\n%s", err, out.String(), e.log.String())
	}
	m := regexp.MustCompile(`grant (g_[0-9a-f]+)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("demo-agent printed no grant:\n%s", out.String())
	}
	// The demo agent has exited: its task grant ends within the daemon's poll interval.
	deadline := time.Now().Add(5 * time.Second)
	for slices.Contains(consentGrantIDs(t, e), m[1]) {
		if time.Now().After(deadline) {
			t.Fatalf("task grant %s outlived its process by 5 s\n%s", m[1], e.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Same agent identity, same task, another process: the task must be approved again.
	_, err := consentNow(e.conn(), []string{emutest.ResourceScopeRead}, client.WithTask("task-exit"))
	consentWantReason(t, err, codes.FailedPrecondition, "CONSENT_PENDING", "task of an exited process")
}

func TestConsentDelegationChain(t *testing.T) {
	n := consentDesktop(t)
	e := newEnv(t, envOptions{})
	e.login()
	c := e.conn()
	read := []string{emutest.ResourceScopeRead}

	ch := consentAsk(c, read)
	n.act(t, n.nextShown(t, "parent request").ID, "allow")
	parent := consentGot(t, ch, "parent agent")

	runChild := func(parentGrant string) (string, error) {
		cmd := exec.Command(e.demo, "-parent-agent", testAgent, "-parent-grant", parentGrant, "-consent-wait", "20s")
		cmd.Env = e.environ()
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}

	// The delegated request is shown with its chain, and allowed.
	done := make(chan error, 1)
	var childOut string
	go func() {
		var err error
		childOut, err = runChild(parent.GrantID)
		done <- err
	}()
	shown := n.nextShown(t, "delegated request")
	consentCheckShown(t, shown, consentExpectText(t, "demo-agent", e.demo, read, consent.DurationText(consent.OneHour, ""),
		"summarise the files you shared with me this week", []string{testAgent}))
	if !strings.Contains(shown.Body, "Asked through: "+testAgent+" → demo-agent") {
		t.Errorf("prompt does not show the chain:\n%s", shown.Body)
	}
	n.act(t, shown.ID, "allow")
	if err := <-done; err != nil {
		t.Fatalf("delegated agent: %v\n%s\n%s", err, childOut, e.log.String())
	}
	m := regexp.MustCompile(`grant (g_[0-9a-f]+)`).FindStringSubmatch(childOut)
	if m == nil {
		t.Fatalf("delegated agent printed no grant:\n%s", childOut)
	}

	// A parent grant that does not exist is refused at once, without a prompt.
	out, err := runChild("g_00000000deadbeef")
	if err == nil || !strings.Contains(out, "CONSENT_DENIED") {
		t.Fatalf("bogus parent grant: %v\n%s", err, out)
	}
	n.none(t, "bogus parent grant")

	// Revoking the parent's grant ends the delegated one with it.
	e.cli("grants", "revoke", parent.GrantID)
	if ids := consentGrantIDs(t, e); slices.Contains(ids, m[1]) {
		t.Fatalf("delegated grant %s outlived its parent: %v", m[1], ids)
	}
}

// alertEnv is a signed-in daemon on a private desktop bus with one approved grant; its consent prompt (answered in
// the terminal) is already taken off the notifier, so the next notification is what the test is about.
func alertEnv(t *testing.T) (*consentNotifier, *env, *client.Conn, []string) {
	t.Helper()
	n := consentDesktop(t)
	e := newEnv(t, envOptions{})
	e.login()
	c := e.conn()
	read := []string{emutest.ResourceScopeRead}
	e.tokenWithApproval(c, read...)
	n.waitClosed(t, n.nextShown(t, "the consent prompt").ID, "the consent prompt answered in the terminal")
	return n, e, c, read
}

// TestSignInRevokedAlertsTheUser: when the identity provider revokes the user's sign-in, the daemon purges, answers
// SIGNIN_REQUIRED, and tells the user on the desktop to sign in again: once, however many tokens fail with it.
func TestSignInRevokedAlertsTheUser(t *testing.T) {
	n, e, c, read := alertEnv(t)

	e.emu.RevokeUserSessions(emutest.DefaultUserUPN)
	req := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: read, ForceRefresh: true}
	if _, err := c.Agent.GetToken(context.Background(), req); status.Code(err) != codes.Unauthenticated || client.Reason(err) != "SIGNIN_REQUIRED" {
		t.Fatalf("forced refresh after the revocation: %v / %q, want Unauthenticated / SIGNIN_REQUIRED", err, client.Reason(err))
	}
	alert := n.nextShown(t, "the sign-in alert")
	for _, want := range []string{emutest.DefaultUserUPN, "agentidd login", "AADSTS50173"} {
		if !strings.Contains(alert.Summary+" "+alert.Body, want) {
			t.Errorf("alert %q / %q does not say %q", alert.Summary, alert.Body, want)
		}
	}
	if len(alert.Actions) != 0 {
		t.Errorf("alert has actions %v: it asks nothing", alert.Actions)
	}
	for range 3 {
		_, _ = c.Agent.GetToken(context.Background(), req)
	}
	n.none(t, "more failures of the same revoked sign-in")
}

// TestAgentRefusedAlertsTheUser: an agent identity disabled at the identity provider is purged, answers
// AGENT_REJECTED, and the user is told which agent and what to check.
func TestAgentRefusedAlertsTheUser(t *testing.T) {
	n, e, c, read := alertEnv(t)

	e.emu.SetAgentEnabled(emutest.AgentAppID, false)
	req := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: read, ForceRefresh: true}
	if _, err := c.Agent.GetToken(context.Background(), req); status.Code(err) != codes.PermissionDenied || client.Reason(err) != "AGENT_REJECTED" {
		t.Fatalf("forced refresh with the agent disabled: %v / %q, want PermissionDenied / AGENT_REJECTED", err, client.Reason(err))
	}
	alert := n.nextShown(t, "the agent alert")
	for _, want := range []string{testAgent, emutest.AgentAppID, "AADSTS7000112", "agentidd secret set"} {
		if !strings.Contains(alert.Summary+" "+alert.Body, want) {
			t.Errorf("alert %q / %q does not say %q", alert.Summary, alert.Body, want)
		}
	}
	_, _ = c.Agent.GetToken(context.Background(), req)
	n.none(t, "another failure of the same agent")
}

// TestAgentCannotApproveItsOwnRequest: the agentidd CLI passes the admin gate wherever it runs, so an agent told (by a
// prompt injection, say) to run `agentidd consent approve` must be refused by who is asking: the daemon turns away
// approvals from a process attested as an agent and from inside an `agentidd exec` tree, and the request stays open
// for the user.
func TestAgentCannotApproveItsOwnRequest(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()
	c := e.conn()
	_, err := consentNow(c, []string{emutest.ResourceScopeRead})
	consentWantReason(t, err, codes.FailedPrecondition, "CONSENT_PENDING", "first request")
	id := client.Metadata(err)["request_id"]

	// A child of this test binary, which the daemon has just attested as test-agent.
	approve := exec.Command(e.agentidd, "consent", "approve", id, "--for", "1h")
	approve.Env = e.environ()
	out, err := approve.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "process tree of agent "+testAgent) {
		t.Fatalf("approval by a child of the agent: %v\n%s", err, out)
	}
	// Nor may it start a sign-in, which would sign in whoever completes it for every agent to act for.
	loginCtx, stopLogin := context.WithTimeout(context.Background(), 20*time.Second) // a sign-in that starts waits for a user
	defer stopLogin()
	login := exec.CommandContext(loginCtx, e.agentidd, "login")
	login.Env = e.environ()
	if out, err := login.CombinedOutput(); err == nil || !strings.Contains(string(out), "process tree of agent "+testAgent) ||
		strings.Contains(string(out), "enter the code") {
		t.Fatalf("sign-in by a child of the agent: %v\n%s", err, out)
	}
	// Inside an `agentidd exec` launch of the agent: the agent's own request, then its attempt to approve it.
	script := `"$0" socket test-agent "$1" >/dev/null
id=$("$2" consent list | sed -n 's/^request \([^:]*\):.*/\1/p' | head -n 1)
"$2" consent approve "$id" --for 1h 2>&1; echo "rc=$?"
"$2" consent reset 2>&1; echo "rc=$?"`
	_, stdout, _ := execShell(t, e, script, execProbe(t), execScope, e.agentidd)
	var said strings.Builder
	for refusals := 0; refusals < 2; {
		line, err := stdout.ReadString('\n')
		if err != nil {
			t.Fatalf("exec'd agent: %v\n%s", err, said.String())
		}
		said.WriteString(line)
		if strings.HasPrefix(line, "rc=") {
			if line == "rc=0\n" {
				t.Fatalf("an agent launched with agentidd exec decided consent:\n%s", said.String())
			}
			refusals++
		}
	}
	if !strings.Contains(said.String(), "process tree of agent "+testAgent) {
		t.Fatalf("exec'd agent was refused, but not for being an agent:\n%s", said.String())
	}

	if list := e.cli("consent", "list"); !strings.Contains(list, "request "+id+":") {
		t.Fatalf("request %s no longer pending after the refused approvals:\n%s", id, list)
	}
	// The user, from outside the agents' trees, still can.
	e.cli("consent", "approve", id, "--for", "1h")
	if _, err := consentNow(c, []string{emutest.ResourceScopeRead}); err != nil {
		t.Fatalf("after the user's approval: %v", err)
	}
}
