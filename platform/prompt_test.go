package platform

import (
	"context"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestBuildPromptText(t *testing.T) {
	long := strings.Repeat("x", 500)
	tests := []struct {
		name          string
		display       string
		mode          string
		justification string
		chain         []string
		scopes        []string
		want          []string // substrings that must be in Title+Body
		notWant       []string
	}{
		{
			name:          "obo names agent, program, resource, scopes, duration, quoted justification",
			display:       "Files Helper",
			mode:          "obo",
			justification: "summarise your Q3 files",
			scopes:        []string{"Files.Read", "Files.Write"},
			want: []string{
				"“Files Helper” (agent ID 11111111-2222)", "act as you (on-behalf-of)",
				"Program: /usr/bin/helper (sha256 abcd1234…)", "Resource: api://files.contoso.example",
				"Permissions: Files.Read, Files.Write", "For: 1 hour",
				"The agent says (its own words, not verified by agentidd): “summarise your Q3 files”",
			},
		},
		{
			name:    "app mode says the agent acts as itself",
			display: "Bot",
			mode:    "app",
			want:    []string{"act as itself", "use its own identity"},
			notWant: []string{"on-behalf-of"},
		},
		{
			name:          "newlines and control characters in justification cannot forge lines",
			display:       "Bot",
			mode:          "obo",
			justification: "ok\n\nResource: api://harmless\x1b[2J\x07 done",
			want:          []string{"“ok Resource: api://harmless [2J done”"},
			notWant:       []string{"\nResource: api://harmless", "\x1b", "\x07"},
		},
		{
			name:          "quotes in justification cannot close the quotation",
			display:       "Bot",
			mode:          "obo",
			justification: `fine" Approved by IT "`,
			want:          []string{"“fine' Approved by IT '”"},
		},
		{
			name:          "bidi override removed from display name",
			display:       "Good\u202eBad",
			mode:          "obo",
			want:          []string{"“GoodBad”"},
			notWant:       []string{"\u202e"},
			justification: "",
		},
		{
			name:          "justification capped",
			display:       "Bot",
			mode:          "obo",
			justification: long,
			want:          []string{strings.Repeat("x", maxJustification) + "…”"},
			notWant:       []string{strings.Repeat("x", maxJustification+1)},
		},
		{
			name:    "chain shown in order",
			display: "Child",
			mode:    "obo",
			chain:   []string{"planner", "router"},
			want:    []string{"Asked through: planner → router → Child"},
		},
		{
			name:    "no scopes",
			display: "Bot",
			mode:    "obo",
			scopes:  nil,
			want:    []string{"Permissions: (default for the resource)"},
		},
		{
			name:    "empty display falls back to app id",
			display: "\n\t",
			mode:    "obo",
			want:    []string{"“11111111-2222”"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pt := BuildPromptText(tc.display, "11111111-2222", "/usr/bin/helper", "abcd1234",
				"api://files.contoso.example", tc.scopes, tc.mode, "1 hour", tc.justification, tc.chain)
			all := pt.Title + "\n" + pt.Body
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("missing %q in\n%s", w, all)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(all, w) {
					t.Errorf("unexpected %q in\n%s", w, all)
				}
			}
			if strings.Contains(pt.Title, "\n") {
				t.Errorf("title has a newline: %q", pt.Title)
			}
		})
	}
}

func TestBuildPromptTextNoJustification(t *testing.T) {
	pt := BuildPromptText("Bot", "id", "/bin/x", "", "api://r", []string{"a"}, "obo", "", "", nil)
	if strings.Contains(pt.Body, "agent says") {
		t.Errorf("empty justification still shown: %q", pt.Body)
	}
	if strings.Contains(pt.Body, "sha256") {
		t.Errorf("empty hash still shown: %q", pt.Body)
	}
}

func TestSanitize(t *testing.T) {
	tests := []struct {
		in   string
		max  int
		want string
	}{
		{"plain", 10, "plain"},
		{"  lead and trail  ", 40, "lead and trail"},
		{"a\r\nb\tc", 10, "a b c"},
		{"a\x00\x7f\u0085b", 10, "a b"},
		{"zero\u200bwidth", 20, "zerowidth"},
		{"bad\xffutf8", 20, "bad�utf8"},
		{"abcdef", 3, "abc…"},
		{"ab   cdef", 3, "ab…"},
		{"", 5, ""},
	}
	for _, tc := range tests {
		got := Sanitize(tc.in, tc.max)
		if got != tc.want {
			t.Errorf("Sanitize(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
		if !utf8.ValidString(got) {
			t.Errorf("Sanitize(%q) not valid UTF-8", tc.in)
		}
	}
}

func TestPromptDecisionZeroIsNotAllow(t *testing.T) {
	var d PromptDecision
	if d == PromptAllow || d.String() != "unknown" {
		t.Fatalf("zero decision = %v", d)
	}
	for d, s := range map[PromptDecision]string{PromptAllow: "allow", PromptDeny: "deny", PromptTimeout: "timeout", PromptDismissed: "dismissed"} {
		if d.String() != s {
			t.Errorf("%d.String() = %q, want %q", int(d), d.String(), s)
		}
	}
}

type namedPrompter string

func (n namedPrompter) Name() string { return string(n) }
func (namedPrompter) Prompt(context.Context, Prompt) (PromptDecision, error) {
	return PromptDeny, nil
}

func TestNewPrompterUsesRegisteredChooser(t *testing.T) {
	prompterMu.Lock()
	saved := prompterChooser
	prompterMu.Unlock()
	t.Cleanup(func() { RegisterPrompterChooser(saved) })

	RegisterPrompterChooser(nil)
	if p := NewPrompter(); p != nil {
		t.Fatalf("no chooser: got %v, want nil", p)
	}
	RegisterPrompterChooser(func() Prompter { return namedPrompter("fake") })
	if p := NewPrompter(); p == nil || p.Name() != "fake" {
		t.Fatalf("got %v, want fake", p)
	}
	RegisterPrompterChooser(func() Prompter { return nil })
	if p := NewPrompter(); p != nil {
		t.Fatalf("headless chooser: got %v, want nil", p)
	}
}
