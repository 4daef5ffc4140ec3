//go:build linux

package linux

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/agentidd/agentidd/platform"
)

func init() {
	platform.RegisterPrompterChooser(choosePrompter)
}

const (
	notifyName  = "org.freedesktop.Notifications"
	notifyPath  = dbus.ObjectPath("/org/freedesktop/Notifications")
	notifyIface = "org.freedesktop.Notifications"

	// NotificationClosed reasons from the Desktop Notifications spec.
	closedExpired   = 1
	closedDismissed = 2

	urgencyCritical = byte(2)
)

// choosePrompter prefers desktop notifications (they work on every
// freedesktop desktop and need no extra program), then a zenity or kdialog
// dialog, else nil: a headless or SSH session approves from the terminal.
func choosePrompter() platform.Prompter {
	if addr := sessionBusAddress(); addr != "" {
		if p, err := NewNotifyPrompter(addr); err == nil {
			return p
		}
	}
	if p := NewDialogPrompter(); p != nil {
		return p
	}
	return nil
}

// sessionBusAddress is $DBUS_SESSION_BUS_ADDRESS, else the systemd user
// bus socket if it exists. Never D-Bus autolaunch: that would start a
// private bus no notification server listens on.
func sessionBusAddress() string {
	if a := os.Getenv("DBUS_SESSION_BUS_ADDRESS"); a != "" {
		return a
	}
	sock := "/run/user/" + strconv.Itoa(os.Getuid()) + "/bus"
	if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
		return "unix:path=" + sock
	}
	return ""
}

// NotifyPrompter asks through org.freedesktop.Notifications with Allow,
// Deny and Details actions. It opens a connection per prompt: prompts are
// rare and a long-lived connection would not survive a session restart.
type NotifyPrompter struct {
	addr string
}

var _ platform.Prompter = (*NotifyPrompter)(nil)

// NewNotifyPrompter returns a prompter for the bus at addr, or an error
// when the bus is unreachable or no notification server owns the name.
func NewNotifyPrompter(addr string) (*NotifyPrompter, error) {
	conn, err := dbus.Connect(addr)
	if err != nil {
		return nil, fmt.Errorf("connect session bus: %w", err)
	}
	defer conn.Close()
	var has bool
	if err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, notifyName).Store(&has); err != nil {
		return nil, fmt.Errorf("NameHasOwner: %w", err)
	}
	if !has {
		return nil, fmt.Errorf("%w: no notification server on the session bus", platform.ErrPromptUnavailable)
	}
	return &NotifyPrompter{addr: addr}, nil
}

// Name implements platform.Prompter.
func (p *NotifyPrompter) Name() string { return "notification" }

// Prompt shows a critical, resident notification and maps the user's
// action to a decision. Only signals sent by the current owner of the
// notification service count: any process of the user can emit an
// ActionInvoked "allow" on the session bus, but not under that unique name.
func (p *NotifyPrompter) Prompt(ctx context.Context, pr platform.Prompt) (platform.PromptDecision, error) {
	conn, err := dbus.Connect(p.addr)
	if err != nil {
		return 0, fmt.Errorf("%w: connect session bus: %w", platform.ErrPromptUnavailable, err)
	}
	defer conn.Close()

	var owner string
	if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetNameOwner", 0, notifyName).Store(&owner); err != nil {
		return 0, fmt.Errorf("%w: GetNameOwner: %w", platform.ErrPromptUnavailable, err)
	}
	obj := conn.Object(notifyName, notifyPath)
	var caps []string
	if err := obj.CallWithContext(ctx, notifyIface+".GetCapabilities", 0).Store(&caps); err != nil {
		return 0, fmt.Errorf("%w: GetCapabilities: %w", platform.ErrPromptUnavailable, err)
	}
	markup := slices.Contains(caps, "body-markup")

	// Subscribe before Notify so an instant click is not missed.
	sigs := make(chan *dbus.Signal, 16)
	conn.Signal(sigs)
	if err := conn.AddMatchSignalContext(ctx, dbus.WithMatchSender(owner), dbus.WithMatchObjectPath(notifyPath),
		dbus.WithMatchInterface(notifyIface)); err != nil {
		return 0, fmt.Errorf("%w: AddMatch: %w", platform.ErrPromptUnavailable, err)
	}

	if !slices.Contains(caps, "actions") {
		// Servers without actions (notify-osd) can still tell the user
		// where to answer.
		body := pr.Text.Body + "\n\n" + terminalHint(pr.RequestID)
		if _, err := notify(obj, 0, pr.Text.Title, body, markup, nil); err != nil {
			return 0, fmt.Errorf("%w: Notify: %w", platform.ErrPromptUnavailable, err)
		}
		return 0, fmt.Errorf("%w: notification server has no actions", platform.ErrPromptUnavailable)
	}

	actions := []string{"allow", "Allow", "deny", "Deny", "details", "Details"}
	id, err := notify(obj, 0, pr.Text.Title, pr.Text.Body, markup, actions)
	if err != nil {
		return 0, fmt.Errorf("%w: Notify: %w", platform.ErrPromptUnavailable, err)
	}
	closeIt := func() {
		// ctx may be done already; closing must still happen.
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = obj.CallWithContext(cctx, notifyIface+".CloseNotification", 0, id).Err
	}

	timeout := pr.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			closeIt()
			return platform.PromptDismissed, ctx.Err()
		case <-timer.C:
			closeIt()
			return platform.PromptTimeout, nil
		case sig, ok := <-sigs:
			if !ok {
				return 0, fmt.Errorf("%w: session bus connection lost", platform.ErrPromptUnavailable)
			}
			if sig.Sender != owner || sig.Path != notifyPath {
				continue
			}
			dec, done := decodeSignal(sig, id)
			if !done {
				if isAction(sig, id, "details") {
					body := pr.Text.Body + "\n\n" + terminalHint(pr.RequestID)
					if _, err := notify(obj, id, pr.Text.Title, body, markup, actions); err != nil {
						return 0, fmt.Errorf("%w: Notify: %w", platform.ErrPromptUnavailable, err)
					}
				}
				continue
			}
			if dec == platform.PromptAllow || dec == platform.PromptDeny {
				closeIt() // resident notifications stay after an action
			}
			return dec, nil
		}
	}
}

var _ platform.Alerter = (*NotifyPrompter)(nil)

// Alert implements platform.Alerter: a normal-urgency notification with no actions, which the server expires by its
// own rules.
func (p *NotifyPrompter) Alert(ctx context.Context, title, body string) error {
	conn, err := dbus.Connect(p.addr, dbus.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("connect session bus: %w", err)
	}
	defer conn.Close()
	hints := map[string]dbus.Variant{"urgency": dbus.MakeVariant(byte(1))}
	return conn.Object(notifyName, notifyPath).CallWithContext(ctx, notifyIface+".Notify", 0,
		"agentidd", uint32(0), "dialog-warning", title, escapeMarkup(body), []string{}, hints, int32(-1)).Err
}

// notify is deliberately not bound to the prompt's ctx: a cancellation
// racing with the call would leave a notification on screen whose id we
// never learnt and so cannot close.
func notify(obj dbus.BusObject, replaces uint32, title, body string, markup bool, actions []string) (uint32, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if markup {
		body = escapeMarkup(body)
	}
	if actions == nil {
		actions = []string{}
	}
	hints := map[string]dbus.Variant{
		"urgency":  dbus.MakeVariant(urgencyCritical),
		"resident": dbus.MakeVariant(true),
	}
	var id uint32
	// expire_timeout 0 = never: the prompter enforces its own timeout so
	// every server behaves the same.
	err := obj.CallWithContext(ctx, notifyIface+".Notify", 0,
		"agentidd", replaces, "dialog-password", title, body, actions, hints, int32(0)).Store(&id)
	return id, err
}

// decodeSignal maps a signal about notification id to a decision; done is
// false for signals that are not a final answer.
func decodeSignal(sig *dbus.Signal, id uint32) (platform.PromptDecision, bool) {
	switch sig.Name {
	case notifyIface + ".ActionInvoked":
		if len(sig.Body) != 2 {
			return 0, false
		}
		nid, ok1 := sig.Body[0].(uint32)
		action, ok2 := sig.Body[1].(string)
		if !ok1 || !ok2 || nid != id {
			return 0, false
		}
		switch action {
		case "allow":
			return platform.PromptAllow, true
		case "deny":
			return platform.PromptDeny, true
		}
	case notifyIface + ".NotificationClosed":
		if len(sig.Body) != 2 {
			return 0, false
		}
		nid, ok1 := sig.Body[0].(uint32)
		reason, ok2 := sig.Body[1].(uint32)
		if !ok1 || !ok2 || nid != id {
			return 0, false
		}
		if reason == closedExpired {
			return platform.PromptTimeout, true
		}
		return platform.PromptDismissed, true
	}
	return 0, false
}

func isAction(sig *dbus.Signal, id uint32, action string) bool {
	if sig.Name != notifyIface+".ActionInvoked" || len(sig.Body) != 2 {
		return false
	}
	nid, _ := sig.Body[0].(uint32)
	a, _ := sig.Body[1].(string)
	return nid == id && a == action
}

func terminalHint(requestID string) string {
	return "Request " + requestID + ". You can also answer in a terminal: agentidd consent approve " + requestID +
		" (or deny " + requestID + ")."
}

// escapeMarkup escapes text for servers that render a body-markup subset.
func escapeMarkup(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// DialogPrompter asks with a modal zenity or kdialog question, for
// desktops without a notification server that supports actions.
type DialogPrompter struct {
	tool string // "zenity" or "kdialog"
	path string
}

var _ platform.Prompter = (*DialogPrompter)(nil)

// NewDialogPrompter returns a zenity (preferred) or kdialog prompter when
// one is on PATH and a display is set, else nil.
func NewDialogPrompter() *DialogPrompter {
	if os.Getenv("DISPLAY") == "" && os.Getenv("WAYLAND_DISPLAY") == "" {
		return nil
	}
	for _, tool := range []string{"zenity", "kdialog"} {
		if path, err := exec.LookPath(tool); err == nil {
			return &DialogPrompter{tool: tool, path: path}
		}
	}
	return nil
}

// Name implements platform.Prompter.
func (p *DialogPrompter) Name() string { return p.tool }

// Prompt runs the dialog and maps its exit status. Deny is the default
// button, so a stray Enter does not approve.
func (p *DialogPrompter) Prompt(ctx context.Context, pr platform.Prompt) (platform.PromptDecision, error) {
	timeout := pr.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	secs := max(1, int((timeout+time.Second-1)/time.Second))
	// kdialog has no timeout of its own; zenity gets a grace second to
	// report its own timeout first.
	tctx, cancel := context.WithTimeout(ctx, timeout+time.Second)
	defer cancel()
	cmd := exec.CommandContext(tctx, p.path, dialogArgs(p.tool, pr, secs)...)
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		return platform.PromptDismissed, ctx.Err()
	}
	if tctx.Err() != nil {
		return platform.PromptTimeout, nil
	}
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return 0, fmt.Errorf("%w: run %s: %w", platform.ErrPromptUnavailable, p.tool, err)
		}
		code = ee.ExitCode()
	}
	return dialogDecision(p.tool, code)
}

func dialogArgs(tool string, pr platform.Prompt, secs int) []string {
	body := pr.Text.Body + "\n\n" + terminalHint(pr.RequestID)
	if tool == "kdialog" {
		// kdialog renders text that looks like HTML as rich text; agent
		// text must not be able to style itself.
		body = strings.NewReplacer("<", "‹", ">", "›").Replace(body)
		return []string{"--title", pr.Text.Title, "--yes-label", "Allow", "--no-label", "Deny", "--warningyesno", body}
	}
	return []string{"--question", "--title=" + pr.Text.Title, "--text=" + body, "--no-markup",
		"--ok-label=Allow", "--cancel-label=Deny", "--default-cancel", "--timeout=" + strconv.Itoa(secs)}
}

// dialogDecision maps exit codes: zenity 0 OK, 1 Cancel or closed, 5
// timeout; kdialog 0 yes, 1 no, 2 cancelled/closed.
func dialogDecision(tool string, code int) (platform.PromptDecision, error) {
	switch {
	case code == 0:
		return platform.PromptAllow, nil
	case code == 1:
		return platform.PromptDeny, nil
	case tool == "zenity" && code == 5:
		return platform.PromptTimeout, nil
	case tool == "kdialog" && code == 2:
		return platform.PromptDismissed, nil
	}
	return 0, fmt.Errorf("%w: %s exited with status %d", platform.ErrPromptUnavailable, tool, code)
}
