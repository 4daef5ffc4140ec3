package platform

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// PromptText is what a consent prompt shows. Title and Body are plain text;
// each prompter escapes them for its own medium (Pango/HTML markup,
// AppleScript strings, Win32 message boxes).
type PromptText struct {
	Title string
	Body  string
}

// Prompt asks the user one consent question. RequestID is the consent
// request the answer belongs to; it is also how the user can answer from a
// terminal (`agentidd consent approve <id>`).
type Prompt struct {
	RequestID string
	Text      PromptText
	Timeout   time.Duration
}

// PromptDecision is the user's answer. The zero value is deliberately not a
// decision, so a forgotten assignment can never read as "allow".
type PromptDecision int

const (
	// PromptAllow means the user chose Allow.
	PromptAllow PromptDecision = iota + 1
	// PromptDeny means the user chose Deny.
	PromptDeny
	// PromptTimeout means nobody answered within Prompt.Timeout.
	PromptTimeout
	// PromptDismissed means the prompt was closed without a choice.
	PromptDismissed
)

func (d PromptDecision) String() string {
	switch d {
	case PromptAllow:
		return "allow"
	case PromptDeny:
		return "deny"
	case PromptTimeout:
		return "timeout"
	case PromptDismissed:
		return "dismissed"
	default:
		return "unknown"
	}
}

// Prompter shows a consent prompt to the user at the keyboard and waits for
// the answer, the timeout or ctx. A prompter that cannot show anything
// returns an error (ideally wrapping ErrPromptUnavailable); the caller then
// keeps the request open for the terminal path instead of treating the
// failure as an answer.
type Prompter interface {
	Name() string
	Prompt(ctx context.Context, p Prompt) (PromptDecision, error)
}

// ErrPromptUnavailable says the prompter could not put a question in front
// of the user (no GUI session, service gone). It is not a denial.
var ErrPromptUnavailable = errors.New("no interactive prompt available; approve or deny from the terminal with `agentidd consent`")

// The per-OS package (platform/linux, platform/darwin, platform/windows)
// registers its chooser from init. It cannot be called directly from here:
// those packages import platform for the interfaces, so platform importing
// them would be a cycle.
var (
	prompterMu      sync.Mutex
	prompterChooser func() Prompter
)

// RegisterPrompterChooser is called by the per-OS platform package in its
// init. The chooser returns nil when no GUI prompter is usable.
func RegisterPrompterChooser(choose func() Prompter) {
	prompterMu.Lock()
	defer prompterMu.Unlock()
	prompterChooser = choose
}

// NewPrompter returns the best GUI prompter for this session, or nil when
// none is usable (headless, SSH, no OS package linked in). With nil, consent
// is only possible from the terminal.
func NewPrompter() Prompter {
	prompterMu.Lock()
	choose := prompterChooser
	prompterMu.Unlock()
	if choose == nil {
		return nil
	}
	return choose()
}

// Alerter is implemented by prompters that can also just tell the user something only they can fix (their sign-in
// is gone, the identity provider refused an agent identity), without asking a question. The daemon uses the prompter's
// channel when it has one; without it (headless), the log and `agentidd status` say it anyway.
type Alerter interface {
	Alert(ctx context.Context, title, body string) error
}

// Caps on agent-supplied text. Long enough to be useful, short enough that
// an agent cannot push the real facts (program, resource) off the screen.
const (
	maxJustification = 200
	maxField         = 160
	maxScopes        = 20
)

// BuildPromptText is the one place prompt wording is decided, so every OS
// shows the same facts. Every argument may come from an agent or its
// registration and is treated as untrusted: control characters, newlines
// and bidi overrides are removed and lengths capped. The justification is
// quoted and labelled as the agent's own words because nothing has checked
// it.
func BuildPromptText(agentDisplay, agentAppID, exePath, hashPrefix, resource string, scopes []string, mode string, duration string, justification string, chain []string) PromptText {
	name := Sanitize(agentDisplay, maxField)
	if name == "" {
		name = Sanitize(agentAppID, maxField)
	}
	if name == "" {
		name = "An unnamed agent"
	}
	var act string
	switch mode {
	case "app":
		act = "act as itself (its own agent identity, not as you)"
	default:
		act = "act as you (on-behalf-of)"
	}
	title := "agentidd: allow " + quote(name) + " to act as you?"
	if mode == "app" {
		title = "agentidd: allow " + quote(name) + " to use its own identity?"
	}

	var b strings.Builder
	b.WriteString(quote(name))
	if id := Sanitize(agentAppID, maxField); id != "" && id != name {
		b.WriteString(" (agent ID " + id + ")")
	}
	b.WriteString(" wants to " + act + ".\n\n")

	prog := Sanitize(exePath, maxField)
	if prog == "" {
		prog = "unknown"
	}
	b.WriteString("Program: " + prog)
	if h := Sanitize(hashPrefix, 64); h != "" {
		b.WriteString(" (sha256 " + h + "…)")
	}
	b.WriteString("\n")

	res := Sanitize(resource, maxField)
	if res == "" {
		res = "unknown"
	}
	b.WriteString("Resource: " + res + "\n")

	b.WriteString("Permissions: ")
	clean := make([]string, 0, len(scopes))
	for _, s := range scopes {
		if s = Sanitize(s, maxField); s != "" {
			clean = append(clean, s)
		}
	}
	switch {
	case len(clean) == 0:
		b.WriteString("(default for the resource)")
	case len(clean) > maxScopes:
		b.WriteString(strings.Join(clean[:maxScopes], ", "))
		b.WriteString(", and more")
	default:
		b.WriteString(strings.Join(clean, ", "))
	}
	b.WriteString("\n")

	if d := Sanitize(duration, maxField); d != "" {
		b.WriteString("For: " + d + "\n")
	}

	if len(chain) > 0 {
		links := make([]string, 0, len(chain))
		for _, c := range chain {
			if c = Sanitize(c, maxField); c != "" {
				links = append(links, c)
			}
		}
		if len(links) > 0 {
			b.WriteString("Asked through: " + strings.Join(links, " → ") + " → " + name + "\n")
		}
	}

	if j := Sanitize(justification, maxJustification); j != "" {
		b.WriteString("\nThe agent says (its own words, not verified by agentidd): " + quote(j) + "\n")
	}
	return PromptText{Title: title, Body: strings.TrimRight(b.String(), "\n")}
}

// quote wraps s in typographic quotes after replacing ASCII double quotes,
// so agent text cannot close the quotation early and pose as our own text.
func quote(s string) string {
	return "“" + strings.NewReplacer(`"`, "'", "“", "'", "”", "'").Replace(s) + "”"
}

// Sanitize makes untrusted text safe to show in one line: control
// characters (including newlines and tabs) become spaces, bidi controls
// and other format characters are dropped (they can reorder what the user
// reads), invalid UTF-8 is replaced, runs of spaces collapse, and the result
// is cut to max runes with an ellipsis.
func Sanitize(s string, max int) string {
	var b strings.Builder
	b.Grow(len(s))
	n := 0
	space := false
	truncated := false
	for _, r := range s {
		switch {
		case r == utf8.RuneError:
			r = '�'
		case unicode.IsControl(r) || unicode.IsSpace(r):
			space = b.Len() > 0
			continue
		case unicode.Is(unicode.Cf, r):
			continue
		}
		if space {
			if n+1 >= max {
				truncated = true
				break
			}
			b.WriteByte(' ')
			n++
			space = false
		}
		if n >= max {
			truncated = true
			break
		}
		b.WriteRune(r)
		n++
	}
	if truncated {
		return strings.TrimRight(b.String(), " ") + "…"
	}
	return b.String()
}
