package audit

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestQuoteEscapesTerminalControls: Quote reads back as the string it was given, and writes the controls a terminal
// acts on (C1, among them CSI U+009B; bidi overrides) as escapes.
func TestQuoteEscapesTerminalControls(t *testing.T) {
	for _, s := range []string{"plain", "\u009b2J", "\x1b[2J", "a\u202eb", "\u0085next", "q\"uote\n"} {
		q := Quote(s)
		var back string
		if err := json.Unmarshal([]byte(q), &back); err != nil || back != s {
			t.Errorf("Quote(%q) = %s reads back as %q, %v", s, q, back, err)
		}
		if strings.ContainsAny(q, "\u009b\u0085\u202e\x1b\n") {
			t.Errorf("Quote(%q) = %q holds a raw control", s, q)
		}
	}
}
