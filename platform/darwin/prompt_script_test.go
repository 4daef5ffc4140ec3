package darwin

import (
	"strings"
	"testing"
	"time"

	"github.com/agentidd/agentidd/platform"
)

// parseLiteral decodes an AppleScript string literal starting at s[0] and
// returns its value and the rest of s after the closing quote.
func parseLiteral(t *testing.T, s string) (string, string) {
	t.Helper()
	if !strings.HasPrefix(s, `"`) {
		t.Fatalf("not a literal: %q", s)
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return b.String(), s[i+1:]
		case '\\':
			i++
			if i == len(s) {
				t.Fatalf("dangling backslash in %q", s)
			}
			switch s[i] {
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			case '"', '\\':
				b.WriteByte(s[i])
			default:
				t.Fatalf("unknown escape \\%c in %q", s[i], s)
			}
		case '\n', '\r':
			t.Fatalf("raw line break in literal %q", s)
		default:
			b.WriteByte(c)
		}
	}
	t.Fatalf("unterminated literal %q", s)
	return "", ""
}

func TestAppleScriptString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{`say "hi"`, `say "hi"`},
		{`back\slash`, `back\slash`},
		{"two\nlines\r\tx", "two\nlines\r\tx"},
		{"bell\x07esc\x1b", "bellesc"},
		{`" & (do shell script "rm -rf ~") & "`, `" & (do shell script "rm -rf ~") & "`},
		{`\"`, `\"`},
		{"ünïcødé “quotes” «chevrons»", "ünïcødé “quotes” «chevrons»"},
		{"", ""},
	}
	for _, tc := range tests {
		lit := AppleScriptString(tc.in)
		got, rest := parseLiteral(t, lit)
		if got != tc.want || rest != "" {
			t.Errorf("AppleScriptString(%q) = %s → %q (rest %q), want %q", tc.in, lit, got, rest, tc.want)
		}
	}
}

func TestDialogScript(t *testing.T) {
	p := platform.Prompt{
		RequestID: "cr_1",
		Text:      platform.PromptText{Title: `Allow "Bot"?`, Body: "line1\n\"quoted\" \\ end"},
		Timeout:   90 * time.Second,
	}
	s := dialogScript(p)
	for _, w := range []string{"with timeout of 150 seconds\n", `buttons {"Deny", "Allow"} default button "Deny"`, "giving up after 90\n", "end timeout"} {
		if !strings.Contains(s, w) {
			t.Errorf("script lacks %q:\n%s", w, s)
		}
	}
	i := strings.Index(s, "display dialog ")
	body, rest := parseLiteral(t, s[i+len("display dialog "):])
	if !strings.HasPrefix(body, p.Text.Body) || !strings.Contains(body, "agentidd consent approve cr_1") {
		t.Errorf("dialog body = %q", body)
	}
	title, _ := parseLiteral(t, strings.TrimPrefix(rest, " with title "))
	if title != p.Text.Title {
		t.Errorf("title = %q", title)
	}
	n := notificationScript(p)
	if !strings.HasPrefix(n, "display notification ") || !strings.Contains(n, "agentidd consent approve cr_1") {
		t.Errorf("notification script = %s", n)
	}
}

func TestParseDialogResult(t *testing.T) {
	tests := []struct {
		out  string
		want platform.PromptDecision
		ok   bool
	}{
		{"button returned:Allow, gave up:false\n", platform.PromptAllow, true},
		{"button returned:Deny, gave up:false", platform.PromptDeny, true},
		{"button returned:, gave up:true", platform.PromptTimeout, true},
		{"button returned:Allow", platform.PromptAllow, true},
		{"button returned:Allowed, gave up:false", 0, false},
		{"", 0, false},
		{"execution error: User canceled. (-128)", 0, false},
	}
	for _, tc := range tests {
		d, ok := parseDialogResult(tc.out)
		if d != tc.want || ok != tc.ok {
			t.Errorf("parseDialogResult(%q) = %v, %v; want %v, %v", tc.out, d, ok, tc.want, tc.ok)
		}
	}
}

func TestTimeoutSeconds(t *testing.T) {
	for d, want := range map[time.Duration]int{0: 120, -time.Second: 120, time.Millisecond: 1, 1500 * time.Millisecond: 2, time.Minute: 60} {
		if got := timeoutSeconds(d); got != want {
			t.Errorf("timeoutSeconds(%v) = %d, want %d", d, got, want)
		}
	}
}

// The alert's text comes partly from the identity provider's error (quotes, backslashes, line breaks): it must stay
// inside its literals.
func TestAlertScript(t *testing.T) {
	title, body := `agentidd: sign in "again"`, "AADSTS50173: revoked \\ \"session\"\nrun: agentidd login"
	script := alertScript(title, body)
	rest, ok := strings.CutPrefix(script, "display notification ")
	if !ok {
		t.Fatalf("script %q", script)
	}
	gotBody, rest := parseLiteral(t, rest)
	rest, ok = strings.CutPrefix(rest, " with title ")
	if !ok {
		t.Fatalf("script %q", script)
	}
	gotTitle, rest := parseLiteral(t, rest)
	if gotBody != body || gotTitle != title || rest != "" {
		t.Errorf("alertScript round trip: body %q title %q rest %q", gotBody, gotTitle, rest)
	}
}
