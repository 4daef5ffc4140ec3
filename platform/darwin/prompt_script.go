package darwin

// This file has no build tag on purpose: the AppleScript text is built and
// parsed here so it can be unit-tested on Linux CI; only running osascript
// (prompt.go) is macOS-only.

import (
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/agentidd/agentidd/platform"
)

// AppleScriptString returns s as an AppleScript string literal, quotes
// included. Backslash and double quote are escaped, line breaks and tabs
// use AppleScript's \n, \r and \t escapes, and other control characters are
// dropped, so no input can end the literal early and inject script.
func AppleScriptString(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '\\':
			b.WriteString(`\\`)
		case '"':
			b.WriteString(`\"`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		default:
			if unicode.IsControl(r) {
				continue
			}
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// dialogScript is the osascript program for one prompt. Deny is the
// default button, so a stray Return does not approve. The AppleEvent
// timeout is raised above the dialog's own, or a long prompt would fail
// with error -1712 after two minutes.
func dialogScript(p platform.Prompt) string {
	secs := timeoutSeconds(p.Timeout)
	body := p.Text.Body + "\n\nRequest " + p.RequestID + ". You can also answer in a terminal: agentidd consent approve " + p.RequestID
	return "with timeout of " + strconv.Itoa(secs+60) + " seconds\n" +
		"activate\n" +
		"display dialog " + AppleScriptString(body) +
		" with title " + AppleScriptString(p.Text.Title) +
		` buttons {"Deny", "Allow"} default button "Deny" with icon caution giving up after ` + strconv.Itoa(secs) + "\n" +
		"end timeout"
}

// notificationScript is the fallback when no dialog can be shown: it tells
// the user where to answer.
func notificationScript(p platform.Prompt) string {
	return "display notification " + AppleScriptString(p.Text.Body) +
		" with title " + AppleScriptString(p.Text.Title) +
		" subtitle " + AppleScriptString("Answer in a terminal: agentidd consent approve "+p.RequestID)
}

// alertScript shows a notification that needs no answer.
func alertScript(title, body string) string {
	return "display notification " + AppleScriptString(body) + " with title " + AppleScriptString(title)
}

func timeoutSeconds(d time.Duration) int {
	if d <= 0 {
		d = 2 * time.Minute
	}
	return max(1, int((d+time.Second-1)/time.Second))
}

// parseDialogResult reads osascript's output for display dialog, e.g.
// "button returned:Allow, gave up:false". ok is false for anything else.
func parseDialogResult(out string) (d platform.PromptDecision, ok bool) {
	out = strings.TrimSpace(out)
	if strings.Contains(out, "gave up:true") {
		return platform.PromptTimeout, true
	}
	for _, field := range strings.Split(out, ", ") {
		switch field {
		case "button returned:Allow":
			return platform.PromptAllow, true
		case "button returned:Deny":
			return platform.PromptDeny, true
		}
	}
	return 0, false
}
