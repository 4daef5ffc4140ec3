//go:build linux

package linux

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/agentidd/agentidd/platform"
)

// startBus runs a private session bus and returns its address.
func startBus(t *testing.T) string {
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
		t.Fatalf("read bus address: %v", err)
	}
	return strings.TrimSpace(addr)
}

type notifyCall struct {
	Summary, Body string
	Replaces      uint32
	Actions       []string
	Hints         map[string]dbus.Variant
}

// fakeServer implements org.freedesktop.Notifications on the test bus.
type fakeServer struct {
	conn   *dbus.Conn
	caps   []string
	mu     sync.Mutex
	next   uint32
	calls  chan notifyCall
	closed chan uint32
}

func (f *fakeServer) Notify(app string, replaces uint32, icon, summary, body string, actions []string, hints map[string]dbus.Variant, timeout int32) (uint32, *dbus.Error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := replaces
	if id == 0 {
		f.next++
		id = f.next
	}
	f.calls <- notifyCall{Summary: summary, Body: body, Replaces: replaces, Actions: actions, Hints: hints}
	return id, nil
}

func (f *fakeServer) CloseNotification(id uint32) *dbus.Error {
	f.closed <- id
	return nil
}

func (f *fakeServer) GetCapabilities() ([]string, *dbus.Error) { return f.caps, nil }

func (f *fakeServer) emit(t *testing.T, member string, args ...any) {
	t.Helper()
	if err := f.conn.Emit(notifyPath, notifyIface+"."+member, args...); err != nil {
		t.Fatal(err)
	}
}

func startServer(t *testing.T, addr string, caps []string) *fakeServer {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	f := &fakeServer{conn: conn, caps: caps, calls: make(chan notifyCall, 10), closed: make(chan uint32, 10)}
	if err := conn.Export(f, notifyPath, notifyIface); err != nil {
		t.Fatal(err)
	}
	reply, err := conn.RequestName(notifyName, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName = %v, %v", reply, err)
	}
	return f
}

var testPrompt = platform.Prompt{
	RequestID: "cr_0011223344556677",
	Text:      platform.PromptText{Title: "agentidd: allow “Bot” to act as you?", Body: "“Bot” wants <b>x</b> & more"},
	Timeout:   5 * time.Second,
}

func TestNewNotifyPrompterNeedsServer(t *testing.T) {
	addr := startBus(t)
	if _, err := NewNotifyPrompter(addr); !errors.Is(err, platform.ErrPromptUnavailable) {
		t.Fatalf("no server: err = %v", err)
	}
	startServer(t, addr, []string{"actions"})
	if _, err := NewNotifyPrompter(addr); err != nil {
		t.Fatalf("with server: %v", err)
	}
	if _, err := NewNotifyPrompter("unix:path=" + filepath.Join(t.TempDir(), "nobus")); err == nil {
		t.Fatal("unreachable bus accepted")
	}
}

func TestNotifyPrompter(t *testing.T) {
	tests := []struct {
		name    string
		caps    []string
		timeout time.Duration
		act     func(t *testing.T, f *fakeServer, id uint32)
		want    platform.PromptDecision
		closed  bool // prompter must CloseNotification
	}{
		{"allow", []string{"actions"}, 5 * time.Second, func(t *testing.T, f *fakeServer, id uint32) {
			f.emit(t, "ActionInvoked", id, "allow")
		}, platform.PromptAllow, true},
		{"deny", []string{"actions", "body-markup"}, 5 * time.Second, func(t *testing.T, f *fakeServer, id uint32) {
			f.emit(t, "ActionInvoked", id, "deny")
		}, platform.PromptDeny, true},
		{"no action within timeout", []string{"actions"}, 300 * time.Millisecond, func(*testing.T, *fakeServer, uint32) {},
			platform.PromptTimeout, true},
		{"other notification's action ignored", []string{"actions"}, 5 * time.Second, func(t *testing.T, f *fakeServer, id uint32) {
			f.emit(t, "ActionInvoked", id+100, "allow")
			f.emit(t, "ActionInvoked", id, "deny")
		}, platform.PromptDeny, true},
		{"closed by user", []string{"actions"}, 5 * time.Second, func(t *testing.T, f *fakeServer, id uint32) {
			f.emit(t, "NotificationClosed", id, uint32(closedDismissed))
		}, platform.PromptDismissed, false},
		{"expired by server", []string{"actions"}, 5 * time.Second, func(t *testing.T, f *fakeServer, id uint32) {
			f.emit(t, "NotificationClosed", id, uint32(closedExpired))
		}, platform.PromptTimeout, false},
		{"details re-shows, then allow", []string{"actions"}, 5 * time.Second, func(t *testing.T, f *fakeServer, id uint32) {
			f.emit(t, "ActionInvoked", id, "details")
			c := <-f.calls
			if c.Replaces != id || !strings.Contains(c.Body, "agentidd consent approve cr_0011223344556677") {
				t.Errorf("details notification = %+v", c)
			}
			f.emit(t, "ActionInvoked", id, "allow")
		}, platform.PromptAllow, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr := startBus(t)
			f := startServer(t, addr, tc.caps)
			p, err := NewNotifyPrompter(addr)
			if err != nil {
				t.Fatal(err)
			}
			pr := testPrompt
			pr.Timeout = tc.timeout
			type result struct {
				d   platform.PromptDecision
				err error
			}
			res := make(chan result, 1)
			go func() {
				d, err := p.Prompt(context.Background(), pr)
				res <- result{d, err}
			}()
			c := <-f.calls
			if c.Summary != pr.Text.Title {
				t.Errorf("summary = %q", c.Summary)
			}
			wantBody := pr.Text.Body
			if slices.Contains(tc.caps, "body-markup") {
				wantBody = "“Bot” wants &lt;b&gt;x&lt;/b&gt; &amp; more"
			}
			if c.Body != wantBody {
				t.Errorf("body = %q, want %q", c.Body, wantBody)
			}
			if want := []string{"allow", "Allow", "deny", "Deny", "details", "Details"}; !slices.Equal(c.Actions, want) {
				t.Errorf("actions = %v", c.Actions)
			}
			if u, ok := c.Hints["urgency"].Value().(byte); !ok || u != 2 {
				t.Errorf("urgency hint = %v", c.Hints["urgency"])
			}
			if r, ok := c.Hints["resident"].Value().(bool); !ok || !r {
				t.Errorf("resident hint = %v", c.Hints["resident"])
			}
			tc.act(t, f, 1)
			r := <-res
			if r.err != nil || r.d != tc.want {
				t.Fatalf("Prompt = %v, %v; want %v", r.d, r.err, tc.want)
			}
			if tc.closed {
				select {
				case id := <-f.closed:
					if id != 1 {
						t.Errorf("closed %d", id)
					}
				case <-time.After(2 * time.Second):
					t.Error("notification not closed")
				}
			}
		})
	}
}

func TestNotifyPrompterIgnoresForgedSignal(t *testing.T) {
	addr := startBus(t)
	f := startServer(t, addr, []string{"actions"})
	p, err := NewNotifyPrompter(addr)
	if err != nil {
		t.Fatal(err)
	}
	forger, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close()
	res := make(chan platform.PromptDecision, 1)
	go func() {
		d, _ := p.Prompt(context.Background(), testPrompt)
		res <- d
	}()
	<-f.calls
	// Another process of the user emits the same signal from its own name.
	if err := forger.Emit(notifyPath, notifyIface+".ActionInvoked", uint32(1), "allow"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	f.emit(t, "ActionInvoked", uint32(1), "deny")
	if d := <-res; d != platform.PromptDeny {
		t.Fatalf("decision = %v: a forged signal was accepted", d)
	}
}

func TestNotifyPrompterCancel(t *testing.T) {
	addr := startBus(t)
	f := startServer(t, addr, []string{"actions"})
	p, _ := NewNotifyPrompter(addr)
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() {
		_, err := p.Prompt(ctx, testPrompt)
		res <- err
	}()
	<-f.calls
	cancel() // decided from the terminal
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	select {
	case <-f.closed:
	case <-time.After(2 * time.Second):
		t.Fatal("notification not closed on cancel")
	}
}

func TestNotifyPrompterWithoutActions(t *testing.T) {
	addr := startBus(t)
	f := startServer(t, addr, nil)
	p, _ := NewNotifyPrompter(addr)
	_, err := p.Prompt(context.Background(), testPrompt)
	if !errors.Is(err, platform.ErrPromptUnavailable) {
		t.Fatalf("err = %v, want ErrPromptUnavailable", err)
	}
	c := <-f.calls
	if len(c.Actions) != 0 || !strings.Contains(c.Body, "agentidd consent approve cr_0011223344556677") {
		t.Fatalf("fallback notification = %+v", c)
	}
}

// fakeTool installs a script named tool on PATH that records its
// arguments and exits with code (or sleeps when code is "sleep").
func fakeTool(t *testing.T, tool, action string) string {
	t.Helper()
	dir := t.TempDir()
	argsFile := filepath.Join(dir, "args")
	script := "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > " + argsFile + "\n" + action + "\n"
	if err := os.WriteFile(filepath.Join(dir, tool), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	t.Setenv("DISPLAY", ":0")
	return argsFile
}

func TestDialogPrompter(t *testing.T) {
	tests := []struct {
		tool, action string
		timeout      time.Duration
		want         platform.PromptDecision
		wantErr      bool
	}{
		{"zenity", "exit 0", 5 * time.Second, platform.PromptAllow, false},
		{"zenity", "exit 1", 5 * time.Second, platform.PromptDeny, false},
		{"zenity", "exit 5", 5 * time.Second, platform.PromptTimeout, false},
		{"zenity", "exit 255", 5 * time.Second, 0, true},
		{"kdialog", "exit 0", 5 * time.Second, platform.PromptAllow, false},
		{"kdialog", "exit 1", 5 * time.Second, platform.PromptDeny, false},
		{"kdialog", "exit 2", 5 * time.Second, platform.PromptDismissed, false},
		{"kdialog", "exec /bin/sleep 30", 200 * time.Millisecond, platform.PromptTimeout, false},
	}
	for _, tc := range tests {
		t.Run(tc.tool+" "+tc.action, func(t *testing.T) {
			argsFile := fakeTool(t, tc.tool, tc.action)
			p := NewDialogPrompter()
			if p == nil || p.Name() != tc.tool {
				t.Fatalf("NewDialogPrompter = %v", p)
			}
			pr := testPrompt
			pr.Timeout = tc.timeout
			d, err := p.Prompt(context.Background(), pr)
			if tc.wantErr {
				if !errors.Is(err, platform.ErrPromptUnavailable) {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if err != nil || d != tc.want {
				t.Fatalf("Prompt = %v, %v; want %v", d, err, tc.want)
			}
			args, _ := os.ReadFile(argsFile)
			if tc.tool == "zenity" {
				for _, w := range []string{"--question", "--default-cancel", "--no-markup", "--ok-label=Allow", "--timeout=5", "--title=" + pr.Text.Title} {
					if !strings.Contains(string(args), w+"\n") {
						t.Errorf("zenity args lack %q:\n%s", w, args)
					}
				}
			}
			if tc.tool == "kdialog" && strings.Contains(string(args), "<b>") {
				t.Errorf("kdialog got markup-looking text:\n%s", args)
			}
		})
	}
}

func TestNewDialogPrompterNeedsDisplay(t *testing.T) {
	fakeTool(t, "zenity", "exit 0")
	t.Setenv("DISPLAY", "")
	t.Setenv("WAYLAND_DISPLAY", "")
	if p := NewDialogPrompter(); p != nil {
		t.Fatalf("headless: got %v", p)
	}
	t.Setenv("WAYLAND_DISPLAY", "wayland-0")
	if p := NewDialogPrompter(); p == nil {
		t.Fatal("wayland session: no prompter")
	}
}

func TestChoosePrompterHeadless(t *testing.T) {
	t.Setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path="+filepath.Join(t.TempDir(), "nobus"))
	t.Setenv("DISPLAY", "")
	t.Setenv("WAYLAND_DISPLAY", "")
	if p := choosePrompter(); p != nil {
		t.Fatalf("headless: got %s", p.Name())
	}
	addr := startBus(t)
	startServer(t, addr, []string{"actions"})
	t.Setenv("DBUS_SESSION_BUS_ADDRESS", addr)
	if p := choosePrompter(); p == nil || p.Name() != "notification" {
		t.Fatalf("with notification server: got %v", p)
	}
}
