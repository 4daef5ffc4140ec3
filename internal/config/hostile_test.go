package config

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestHostileShapesFailFast: the TOML decoder's work grows with the square of
// a key's depth (a 32 KiB file of nested inline tables held a reload for
// seconds, 64 KiB for most of a minute), so structures deeper than any
// setting are refused, with the line, before decoding.
func TestHostileShapesFailFast(t *testing.T) {
	const n = 20000
	cases := []struct{ name, text, want string }{
		{"nested inline tables", base + "x = " + strings.Repeat("{a=", n) + "1" + strings.Repeat("}", n) + "\n", "line 5"},
		{"long dotted key", base + "x" + strings.Repeat(".a", n) + " = 1\n", "line 5"},
		{"long table header", base + "[x" + strings.Repeat(".a", n) + "]\n", "line 5"},
		{"dotted keys inside inline tables", base + "\n\n" + strings.Repeat("a.b.c.d = {", 200) + strings.Repeat("}", 200) + "\n", "line 7"},
		{"nested arrays", base + "x = " + strings.Repeat("[", n) + strings.Repeat("]", n) + "\n", "line 5"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 2)
			go func() { _, err := Parse("/etc/agentidd.toml", []byte(tc.text)); done <- err }()
			go func() { _, err := parsePolicy("/etc/agentidd/policy.toml", []byte(tc.text)); done <- err }()
			for range 2 {
				select {
				case err := <-done:
					if err == nil || !strings.Contains(err.Error(), "nested") || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "/etc/agentidd") {
						t.Errorf("got %.300v, want an error naming the file, %s and the nesting", err, tc.want)
					}
				case <-time.After(2 * time.Second):
					t.Fatal("parsing did not finish within 2s")
				}
			}
		})
	}
}

// TestShapeAcceptsEveryWayToWriteTheSettings: the depth check must not refuse
// a file the decoder reads, whichever TOML spelling it uses.
func TestShapeAcceptsEveryWayToWriteTheSettings(t *testing.T) {
	inline := `authority = "https://login.example/7f3c2a10-5b8e-4c1d-9a6f-2e4b8d0c1a93"
client_id = "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a" # a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s { { { { [ [ [
blueprint_app_id = 'a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d'
state_dir = """st\"""ate.a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w{{{{{{{{{{{{{{{{{{{{{{"""
socket = '''/run/a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z.sock'''
min_ttl = "1.5s"
rate_limit = 1.5e2
agent = [
  { name = "mail", app_id = "c7d8e9f0-a1b2-4c3d-9e4f-5a6b7c8d9e0f", binding = [
    { exe = "/opt/a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r/mail", sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" },
  ] },
]
`
	c, err := Parse("/home/u/.config/agentidd/config.toml", []byte(inline))
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := c.Agent("mail"); !ok || len(a.Bindings) != 1 || c.RateLimit != 150 {
		t.Errorf("inline spelling decoded as %+v", c)
	}
	dotted := base + "[[agent]]\nname = \"mail\"\napp_id = \"c7d8e9f0-a1b2-4c3d-9e4f-5a6b7c8d9e0f\"\n" +
		"binding.exe = \"/opt/mail\"\n" // decodes, then fails validation for the missing hash: not for its shape
	if _, err := Parse("/c.toml", []byte(dotted)); err == nil || strings.Contains(err.Error(), "nested") {
		t.Errorf("dotted spelling: %v", err)
	}
}

// TestLoadRefusesOddFiles: a file that is too big, or is not a regular file
// (a FIFO would block the reader until someone writes to it, /dev/zero never
// ends), is refused with its path rather than read.
func TestLoadRefusesOddFiles(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.toml")
	if err := os.WriteFile(big, []byte(base+"# "+strings.Repeat("x", maxFileSize)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	odd := []struct{ name, path, want string }{{"too big", big, "larger than"}}
	if runtime.GOOS != "windows" {
		fifo := filepath.Join(dir, "fifo.toml")
		if err := exec.Command("mkfifo", fifo).Run(); err == nil {
			odd = append(odd, struct{ name, path, want string }{"fifo", fifo, "not a regular file"})
		}
		if _, err := os.Stat("/dev/zero"); err == nil {
			odd = append(odd, struct{ name, path, want string }{"device", "/dev/zero", "not a regular file"})
		}
	}
	odd = append(odd, struct{ name, path, want string }{"directory", dir, "not a regular file"})
	for _, tc := range odd {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 2)
			go func() { _, err := Load(tc.path); done <- err }()
			go func() { _, err := LoadPolicy(tc.path); done <- err }()
			for range 2 {
				select {
				case err := <-done:
					if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
						t.Errorf("got %.300v, want an error naming %s and saying %q", err, tc.path, tc.want)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("reading did not finish within 5s")
				}
			}
		})
	}
	// A symlink to a regular file is fine: it is how configs are often deployed.
	link := filepath.Join(dir, "link.toml")
	real := filepath.Join(dir, "real.toml")
	if err := os.WriteFile(real, []byte(base), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, link); err == nil {
		if _, err := Load(link); err != nil {
			t.Errorf("Load through a symlink: %v", err)
		}
	}
	if _, err := Load(filepath.Join(dir, "absent.toml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: %v, want ErrNotExist", err)
	}
}

// TestUnknownKeysErrorIsBounded: the error is logged on every reload attempt,
// so a file full of unknown keys (or one enormous quoted key) must not turn
// into a megabyte of log line; it names the first few and counts the rest.
func TestUnknownKeysErrorIsBounded(t *testing.T) {
	var many strings.Builder
	for i := 0; many.Len() < maxFileSize/2; i++ {
		fmt.Fprintf(&many, "k%06d = 1\n", i)
	}
	cases := []struct{ name, text, want string }{
		{"many keys", base + many.String(), "k000000, k000001"},
		{"one huge key", base + `"` + strings.Repeat("q", maxFileSize/2) + `" = 1` + "\n", "qqqq"},
	}
	huge := strings.Repeat("q", maxFileSize/2)
	for _, text := range []string{
		base + "min_ttl = \"" + huge + "\"\n",        // the duration parser quotes what it was given
		base + "\"" + huge + "\" = = 1\n",            // the decoder names the last key
		base + "[agent]\n\"" + huge + "\" = \"x\"\n", // wrong type, under a huge key
	} {
		_, err := Parse("/etc/agentidd.toml", []byte(text))
		if err == nil || !strings.Contains(err.Error(), "/etc/agentidd.toml") || len(err.Error()) > 2048 {
			t.Errorf("decoder error of %d bytes: %.200v", len(fmt.Sprint(err)), err)
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("/etc/agentidd.toml", []byte(tc.text))
			if err == nil || !strings.Contains(err.Error(), "unknown key") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %.200v, want the unknown keys named", err)
			}
			if n := len(err.Error()); n > 2048 {
				t.Errorf("error text is %d bytes", n)
			}
			_, err = parsePolicy("/etc/agentidd/policy.toml", []byte(tc.text))
			if err == nil || len(err.Error()) > 2048 {
				t.Errorf("policy error: %d bytes", len(fmt.Sprint(err)))
			}
		})
	}
}
