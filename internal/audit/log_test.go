package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func sample(i int) Record {
	return Record{
		Event: EventTokenIssued, Outcome: OutcomeOK, Source: SourceCache,
		User:  User{OID: "user-oid-1", UPN: "alice@contoso.example"},
		Agent: Agent{AppID: "agent-app-1", Name: "files-helper"},
		Chain: []string{"planner"}, Mode: "obo", Resource: "api://files.contoso.example",
		Scopes: []string{"Files.Read", "Files.Write"}, GrantID: "g_0123456789abcdef",
		Peer:  Peer{PID: 4242 + i, UID: "1000", Exe: "/usr/bin/helper", SHA256: "abcd1234"},
		Token: TokenRef{SHA256: fmt.Sprintf("ba7816bf8f01%04x", i), UTI: "uti-1", ExpiresAt: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)},
	}
}

func writeLog(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := l.Append(sample(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestAppendVerifyTailRoundTrip(t *testing.T) {
	path := writeLog(t, 5)
	n, err := Verify(path)
	if err != nil || n != 5 {
		t.Fatalf("Verify = %d, %v", n, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
	}
	recs, err := tailRecords(path, 2)
	if err != nil || len(recs) != 2 {
		t.Fatalf("Tail = %d, %v", len(recs), err)
	}
	got := recs[1]
	want := sample(4)
	if got.Seq != 5 || got.Event != want.Event || got.User != want.User || got.Agent != want.Agent ||
		got.Peer != want.Peer || got.Token.SHA256 != want.Token.SHA256 || !got.Token.ExpiresAt.Equal(want.Token.ExpiresAt) ||
		strings.Join(got.Scopes, ",") != "Files.Read,Files.Write" || got.Chain[0] != "planner" || got.Hash == "" || got.Prev != recs[0].Hash {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
	}
	if recs, _ := tailRecords(path, 100); len(recs) != 5 || recs[0].Seq != 1 {
		t.Fatalf("Tail(100) = %d records", len(recs))
	}
	data, _ := os.ReadFile(path)
	if bytes.Contains(data, []byte("eyJ.secret")) {
		t.Fatal("token text in the audit log")
	}
}

func TestOpenContinuesChain(t *testing.T) {
	path := writeLog(t, 3)
	l, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if seq, _ := l.Head(); seq != 3 {
		t.Fatalf("Head seq = %d, want 3", seq)
	}
	id, err := l.Append(sample(9))
	if err != nil || id != "4" {
		t.Fatalf("Append = %q, %v", id, err)
	}
	seq, head := l.Head()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := VerifyAnchor(path, seq, head); err != nil || n != 4 {
		t.Fatalf("VerifyAnchor = %d, %v", n, err)
	}
	if _, err := l.Append(sample(1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
}

func TestVerifyNamesEditedLine(t *testing.T) {
	const lines = 4
	path := writeLog(t, lines)
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Every byte of every line, including the hash and the newline.
	lineNo := 1
	for i := range orig {
		mod := bytes.Clone(orig)
		mod[i] ^= 0x01
		if err := os.WriteFile(path, mod, 0o600); err != nil {
			t.Fatal(err)
		}
		n, err := Verify(path)
		var le *LineError
		if !errors.As(err, &le) || le.Line != lineNo || n != lineNo-1 {
			t.Fatalf("byte %d (line %d %q): Verify = %d, %v", i, lineNo, orig[i], n, err)
		}
		if orig[i] == '\n' {
			lineNo++
		}
	}
}

func TestVerifyDetectsRemovedAndSwappedLines(t *testing.T) {
	path := writeLog(t, 4)
	orig, _ := os.ReadFile(path)
	ls := bytes.SplitAfter(orig, []byte("\n"))[:4]
	tests := []struct {
		name  string
		lines [][]byte
		bad   int
	}{
		{"first removed", [][]byte{ls[1], ls[2], ls[3]}, 1},
		{"middle removed", [][]byte{ls[0], ls[2], ls[3]}, 2},
		{"swapped", [][]byte{ls[0], ls[2], ls[1], ls[3]}, 2},
	}
	for _, tc := range tests {
		if err := os.WriteFile(path, bytes.Join(tc.lines, nil), 0o600); err != nil {
			t.Fatal(err)
		}
		var le *LineError
		if _, err := Verify(path); !errors.As(err, &le) || le.Line != tc.bad {
			t.Errorf("%s: %v, want line %d", tc.name, err, tc.bad)
		}
	}
	// The last line removed still verifies on its own; the anchor catches it.
	if err := os.WriteFile(path, bytes.Join(ls[:3], nil), 0o600); err != nil {
		t.Fatal(err)
	}
	var r struct{ Hash string }
	_ = json.Unmarshal(bytes.TrimSpace(ls[3]), &r)
	if _, err := VerifyAnchor(path, 4, r.Hash); err == nil {
		t.Fatal("truncation below the anchor not detected")
	}
}

func TestTornTailRecovered(t *testing.T) {
	tests := []struct {
		name string
		tail string
	}{
		{"half a record", `{"seq":4,"time":"2026-03-01T10:00:00Z","event":"tok`},
		{"zero-filled block", "\x00\x00\x00\x00\x00\x00"},
		{"hash without closing", `{"seq":4,"prev":"00","hash":"ab`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeLog(t, 3)
			good, _ := os.ReadFile(path)
			if err := os.WriteFile(path, append(bytes.Clone(good), tc.tail...), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := Verify(path); err == nil {
				t.Fatal("Verify accepted a torn tail")
			}
			l, err := Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if l.Dropped() != int64(len(tc.tail)) {
				t.Errorf("Dropped = %d, want %d", l.Dropped(), len(tc.tail))
			}
			if id, err := l.Append(sample(3)); err != nil || id != "4" {
				t.Fatalf("Append = %q, %v", id, err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if n, err := Verify(path); err != nil || n != 4 {
				t.Fatalf("Verify after recovery = %d, %v", n, err)
			}
		})
	}
}

func TestTornOnlyLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.jsonl")
	if err := os.WriteFile(path, []byte(`{"seq":1,"ti`), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if seq, head := l.Head(); seq != 0 || head != string(genesis) {
		t.Fatalf("Head = %d %s", seq, head)
	}
	_, _ = l.Append(sample(0))
	_ = l.Close()
	if n, err := Verify(path); err != nil || n != 1 {
		t.Fatalf("Verify = %d, %v", n, err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600 after Open", fi.Mode().Perm())
	}
}

func TestOpenRefusesDamagedLastLine(t *testing.T) {
	path := writeLog(t, 2)
	data, _ := os.ReadFile(path)
	data[len(data)-20] ^= 1 // inside the last hash, line still complete
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, Options{}); err == nil {
		t.Fatal("Open continued a chain from a damaged line")
	}
}

func TestConcurrentAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := Open(path, Options{FlushInterval: time.Millisecond, BufferSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 300
	var wg sync.WaitGroup
	var mu sync.Mutex
	ids := map[string]bool{}
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				id, err := l.Append(sample(w*each + i))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				ids[id] = true
				mu.Unlock()
				if i%50 == 0 {
					l.Head()
				}
			}
		})
	}
	// Verify concurrently with writers: lines flushed so far must verify
	// (a partly flushed last line is reported as torn, nothing else).
	if _, err := Verify(path); err != nil {
		var le *LineError
		if !errors.As(err, &le) || !strings.Contains(le.Reason, "torn") {
			t.Errorf("concurrent Verify: %v", err)
		}
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if len(ids) != workers*each {
		t.Fatalf("distinct ids = %d", len(ids))
	}
	if n, err := Verify(path); err != nil || n != workers*each {
		t.Fatalf("Verify = %d, %v", n, err)
	}
}

func TestBackgroundFlush(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := Open(path, Options{FlushInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.Append(sample(0)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if n, err := Verify(path); err == nil && n == 1 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("record not flushed by the background loop")
}

func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uote\back`, "nl\n\r\t", "\x00\x1f\x7f", "héllo ✓", "bad\xffutf8", "\u2028\u2029", "</script>&"} {
		b := appendString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Errorf("%q encoded as invalid JSON %s: %v", s, b, err)
			continue
		}
		want, _ := json.Marshal(s)
		var wantS string
		_ = json.Unmarshal(want, &wantS)
		if got != wantS {
			t.Errorf("%q → %q, encoding/json gives %q", s, got, wantS)
		}
	}
}

func TestRecordEncodingDecodes(t *testing.T) {
	tests := []Record{
		{Seq: 1, Time: time.Unix(0, 1).UTC(), Event: EventSignIn},
		sample(1),
		{Seq: 7, Time: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), Event: EventPurge, Reason: "line\nbreak", Peer: Peer{PID: -1}},
		{Seq: 8, Time: time.Unix(9, 0).UTC(), Event: EventLaunchRegistered, Outcome: OutcomeOK, LaunchID: "l-1", RootPID: 4242,
			Agent: Agent{Name: "a"}, Peer: Peer{PID: 4241, UID: "1000", Exe: "/usr/bin/agentidd"}},
	}
	for _, r := range tests {
		b := appendRecord(nil, &r, genesis)
		b = append(b, '}')
		var got Record
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		r.Prev = string(genesis)
		r.Time = r.Time.UTC()
		if fmt.Sprint(got) != fmt.Sprint(r) {
			t.Errorf("decode mismatch:\n got %+v\nwant %+v", got, r)
		}
	}
}

func BenchmarkAppend(b *testing.B) {
	l, err := Open(filepath.Join(b.TempDir(), "audit.jsonl"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	r := sample(1)
	r.Time = time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := l.Append(r); err != nil {
			b.Fatal(err)
		}
	}
}

// tailRecords decodes Tail's lines.
func tailRecords(path string, n int) ([]Record, error) {
	lines, err := Tail(path, n)
	if err != nil {
		return nil, err
	}
	out := make([]Record, 0, len(lines))
	for _, line := range lines {
		var r Record
		if err := json.Unmarshal(line, &r); err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}
