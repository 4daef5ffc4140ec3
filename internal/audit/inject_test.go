package audit

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"unicode"
	"unicode/utf8"
)

// terminalUnsafe reports the first byte sequence in b that a terminal could act on or that would make the line read
// differently from its bytes: an ASCII or C1 control other than the newline ending a line, or a bidi control.
func terminalUnsafe(b []byte) (string, bool) {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if (r < 0x20 && r != '\n') || (r >= 0x7f && r <= 0x9f) || r == '\u2028' || r == '\u2029' || unicode.Is(unicode.Bidi_Control, r) {
			return string(b[i : i+size]), true
		}
		i += size
	}
	return "", false
}

// TestAgentStringsCannotReachTheTerminal: the strings an agent chooses (the agent name it asks for, scopes, task and run
// ids, its executable's path) are written so that neither the file nor `agentidd audit tail`, which decodes each
// record and encodes it again, hands a terminal a control character, an escape sequence or a bidi override, and none
// can end the line or forge a field. The values still read back unchanged.
func TestAgentStringsCannotReachTheTerminal(t *testing.T) {
	hostile := []string{
		"csi\u009b2J",                 // C1 CSI: an escape sequence in one code point
		"osc\u009d0;owned\u009c",      // C1 OSC … ST: sets the window title
		"esc\x1b[31mred",              // 7-bit escape
		"del\x7fdel",                  // DEL
		"report\u202etxt.exe",         // right-to-left override
		"iso\u2066late\u2069",         // bidi isolates
		"mark\u200e\u200f\u061c",      // bidi marks
		"line\nbreak\r\u2028\u2029",   // line ends
		`quote","seq":999,"event":"x`, // field forgery
	}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := make([]Record, 0, len(hostile))
	for _, s := range hostile {
		r := sample(0)
		r.Agent.Name, r.Scopes, r.TaskID, r.RunID, r.Resource, r.Peer.Exe, r.Reason = s, []string{s, "api://x/" + s}, s, s, s, "/tmp/"+s, s
		if _, err := l.Append(r); err != nil {
			t.Fatal(err)
		}
		want = append(want, r)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := bytes.Count(raw, []byte("\n")); got != len(hostile) {
		t.Fatalf("%d records wrote %d lines", len(hostile), got)
	}
	if s, bad := terminalUnsafe(raw); bad {
		t.Fatalf("the log file holds %q raw", s)
	}
	if n, err := Verify(path); err != nil || n != len(hostile) {
		t.Fatalf("Verify = %d, %v", n, err)
	}
	lines, err := Tail(path, len(hostile))
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range lines {
		var got Record
		if err := json.Unmarshal(line, &got); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		w := want[i]
		if got.Seq != uint64(i+1) || got.Event != w.Event || got.Agent.Name != w.Agent.Name || got.TaskID != w.TaskID ||
			got.RunID != w.RunID || got.Resource != w.Resource || got.Peer.Exe != w.Peer.Exe || got.Reason != w.Reason ||
			!slices.Equal(got.Scopes, w.Scopes) {
			t.Fatalf("line %d read back as %+v, want the fields of %+v", i+1, got, w)
		}
		// What `agentidd audit tail` prints: the decoded record encoded again with encoding/json.
		shown, err := json.Marshal(got)
		if err != nil {
			t.Fatal(err)
		}
		if s, bad := terminalUnsafe(shown); bad {
			t.Fatalf("line %d re-encoded for display holds %q raw: %s", i+1, s, shown)
		}
		if !bytes.Equal(shown, line) {
			t.Errorf("line %d re-encoded differs from the line on disk:\n%s\n%s", i+1, shown, line)
		}
	}
}

// TestMarshalJSONQuotesDamagedPrev: a record decoded from a line that does not verify may hold anything in prev and
// hash; re-encoding it still gives valid JSON instead of failing the whole tail.
func TestMarshalJSONQuotesDamagedPrev(t *testing.T) {
	r := sample(1)
	r.Prev, r.Hash = `x","seq":1`, "\u009b"
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var got Record
	if err := json.Unmarshal(b, &got); err != nil || got.Prev != r.Prev || got.Hash != r.Hash {
		t.Fatalf("%s decoded as %+v, %v", b, got, err)
	}
	if s, bad := terminalUnsafe(b); bad {
		t.Fatalf("%q raw in %s", s, b)
	}
}
