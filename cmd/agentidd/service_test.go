package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"

	"github.com/kardianos/service"
)

func TestServiceSubcommands(t *testing.T) {
	var names []string
	for _, c := range serviceCmd(&globals{}).Commands() {
		names = append(names, c.Name())
	}
	sort.Strings(names)
	if got, want := strings.Join(names, " "), "install start status stop uninstall"; got != want {
		t.Fatalf("service subcommands = %q, want %q", got, want)
	}
}

// TestServiceInstallRefuses covers the refusals that happen before any service manager is touched.
func TestServiceInstallRefuses(t *testing.T) {
	dir := t.TempDir()
	valid := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(valid, []byte(`authority = "https://login.microsoftonline.com/11111111-1111-1111-1111-111111111111"
client_id = "22222222-2222-2222-2222-222222222222"
blueprint_app_id = "33333333-3333-3333-3333-333333333333"
state_dir = "state"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	invalid := filepath.Join(dir, "invalid.toml")
	if err := os.WriteFile(invalid, []byte("authority = \"http://insecure\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		config  string
		euid    int
		wantErr string
	}{
		{name: "missing config", config: filepath.Join(dir, "missing.toml"), euid: 1000, wantErr: "refusing to install"},
		{name: "invalid config", config: invalid, euid: 1000, wantErr: "authority"},
		{name: "root", config: valid, euid: 0, wantErr: "as root"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.euid == 0 && runtime.GOOS == "windows" {
				t.Skip("no root refusal on Windows")
			}
			orig := geteuid
			geteuid = func() int { return tt.euid }
			t.Cleanup(func() { geteuid = orig })

			cmd := serviceCmd(&globals{configPath: tt.config})
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			cmd.SetArgs([]string{"install"})
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("install err = %v, want it to mention %q", err, tt.wantErr)
			}
			if _, err := os.Stat(filepath.Join(dir, "state")); !os.IsNotExist(err) {
				t.Errorf("a refused install created the state dir (stat err %v)", err)
			}
		})
	}
}

func TestServiceReadPassword(t *testing.T) {
	tests := []struct {
		name, in, want string
		wantErr        bool
	}{
		{name: "line", in: "s3cret\n", want: "s3cret"},
		{name: "crlf", in: "s3cret\r\n", want: "s3cret"},
		{name: "no newline", in: "s3cret", want: "s3cret"},
		{name: "empty", in: "\n", wantErr: true},
		{name: "nothing", in: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var prompt bytes.Buffer
			got, err := readPassword(strings.NewReader(tt.in), &prompt, `CORP\u`)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("readPassword = %q, %v; want %q (err %v)", got, err, tt.want, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "s3cret") {
				t.Error("error carries the password")
			}
		})
	}
}

// systemdHome is a throw-away user for running the real `agentidd service install|uninstall` through kardianos'
// systemd backend: HOME, XDG dirs and a stand-in systemctl on PATH that logs its arguments, keeps the enable symlink
// the way systemctl does, and fails like the real one when $FAKE_SYSTEMCTL_FAIL names the verb.
type systemdHome struct {
	root, home, exe, config, calls string
}

func newSystemdHome(t *testing.T) *systemdHome {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("kardianos' systemd backend only exists on Linux")
	}
	var systemd service.System
	for _, s := range service.AvailableSystems() {
		if s.String() == "linux-systemd" {
			systemd = s
		}
	}
	if systemd == nil {
		t.Fatal("kardianos has no linux-systemd backend")
	}
	orig := serviceSystem
	serviceSystem = func() service.System { return systemd }
	t.Cleanup(func() { serviceSystem = orig })
	origEUID := geteuid
	geteuid = func() int { return 1000 }
	t.Cleanup(func() { geteuid = origEUID })

	root := t.TempDir()
	h := &systemdHome{root: root, home: filepath.Join(root, "home"), calls: filepath.Join(root, "systemctl.calls")}
	bin, rt := filepath.Join(root, "fakebin"), filepath.Join(root, "run")
	for _, d := range []string{h.home, bin, filepath.Join(rt, "systemd"), filepath.Join(h.home, "bin")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// The user manager's private socket: its presence is what says a manager is running.
	if err := os.WriteFile(filepath.Join(rt, "systemd", "private"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	unitDir := filepath.Join(h.home, ".config", "systemd", "user")
	script := `#!/bin/sh
echo "$@" >> '` + h.calls + `'
verb=$1
if [ "$verb" = "$FAKE_SYSTEMCTL_FAIL" ]; then echo "Failed to $verb: Transport endpoint is not connected" >&2; exit 1; fi
unit='` + unitDir + `'/agentidd.service
wants='` + unitDir + `'/default.target.wants
case "$verb" in
enable) [ -f "$unit" ] || { echo "Unit file agentidd.service does not exist." >&2; exit 1; }
	mkdir -p "$wants" && ln -sf "$unit" "$wants/agentidd.service" ;;
disable) [ -f "$unit" ] || { echo "Unit file agentidd.service does not exist." >&2; exit 1; }
	rm -f "$wants/agentidd.service" ;;
is-active) echo inactive; exit 3 ;;
list-unit-files) [ -f "$unit" ] && echo "agentidd.service disabled" ;;
esac
exit 0
`
	if err := os.WriteFile(filepath.Join(bin, "systemctl"), []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	h.exe = filepath.Join(h.home, "bin", "agentidd")
	if err := os.WriteFile(h.exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	h.config = filepath.Join(h.home, ".config", "agentidd", "config.toml")
	if err := os.MkdirAll(filepath.Dir(h.config), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.config, []byte(`authority = "https://login.microsoftonline.com/11111111-1111-1111-1111-111111111111"
client_id = "22222222-2222-2222-2222-222222222222"
blueprint_app_id = "33333333-3333-3333-3333-333333333333"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("HOME", h.home)
	t.Setenv("XDG_RUNTIME_DIR", rt)
	t.Setenv("XDG_STATE_HOME", filepath.Join(h.home, ".local", "state"))
	t.Setenv("XDG_CONFIG_HOME", "")
	t.Setenv("AGENTIDD_SOCKET", "")
	t.Setenv("FAKE_SYSTEMCTL_FAIL", "")
	return h
}

func (h *systemdHome) unitPath() string {
	return filepath.Join(h.home, ".config", "systemd", "user", "agentidd.service")
}

// run executes `agentidd service ARGS...` and returns its output and error.
func (h *systemdHome) run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := serviceCmd(&globals{configPath: h.config})
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetIn(strings.NewReader(""))
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

// TestServiceInstallFailureLeavesNothing: kardianos writes the unit before systemctl runs. When systemctl fails
// (no user manager on the bus, a daemon-reload error), a retry must not be told "already exists", and nothing
// half-installed may stay behind.
func TestServiceInstallFailureLeavesNothing(t *testing.T) {
	for _, verb := range []string{"enable", "daemon-reload"} {
		t.Run(verb, func(t *testing.T) {
			h := newSystemdHome(t)
			t.Setenv("FAKE_SYSTEMCTL_FAIL", verb)
			if _, err := h.run(t, "install", "--executable", h.exe); err == nil {
				t.Fatal("install succeeded although systemctl failed")
			}
			if _, err := os.Lstat(h.unitPath()); !os.IsNotExist(err) {
				t.Errorf("a failed install left %s (stat err %v)", h.unitPath(), err)
			}
			wants := filepath.Join(filepath.Dir(h.unitPath()), "default.target.wants", "agentidd.service")
			if _, err := os.Lstat(wants); !os.IsNotExist(err) {
				t.Errorf("a failed install left the enable link %s (stat err %v)", wants, err)
			}
			t.Setenv("FAKE_SYSTEMCTL_FAIL", "")
			if out, err := h.run(t, "install", "--executable", h.exe); err != nil {
				t.Fatalf("retry after the failure: %v\n%s", err, out)
			}
		})
	}
}

// TestServiceWithoutUserManager: under su or sudo -u there is no user manager; every command must say so and what
// to do, instead of systemctl's bare "exit status 1", and install must write nothing.
func TestServiceWithoutUserManager(t *testing.T) {
	for _, rt := range []string{"", "no-manager"} {
		for _, action := range []string{"install", "uninstall", "start", "stop", "status"} {
			t.Run(action+"/"+rt, func(t *testing.T) {
				h := newSystemdHome(t)
				if rt == "" {
					t.Setenv("XDG_RUNTIME_DIR", "")
				} else {
					t.Setenv("XDG_RUNTIME_DIR", filepath.Join(h.root, rt))
				}
				args := []string{action}
				if action == "install" {
					args = append(args, "--executable", h.exe)
				}
				_, err := h.run(t, args...)
				if err == nil || !strings.Contains(err.Error(), "no systemd user manager") || !strings.Contains(err.Error(), "enable-linger") {
					t.Fatalf("%s err = %v, want it to name the missing user manager and the remedy", action, err)
				}
				if _, err := os.Lstat(h.unitPath()); !os.IsNotExist(err) {
					t.Errorf("%s wrote %s without a user manager", action, h.unitPath())
				}
				if calls, _ := os.ReadFile(h.calls); len(calls) > 0 {
					t.Errorf("%s ran systemctl without a user manager: %q", action, calls)
				}
			})
		}
	}
}

// TestServiceInstallTwice: a second install refuses, says what to do, and leaves the first unit as it was (the
// clean-up of a failed install must never remove a unit it did not write).
func TestServiceInstallTwice(t *testing.T) {
	h := newSystemdHome(t)
	if out, err := h.run(t, "install", "--executable", h.exe); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	first, err := os.ReadFile(h.unitPath())
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.run(t, "install", "--executable", h.exe)
	if err == nil || !strings.Contains(err.Error(), "already installed") || !strings.Contains(err.Error(), "uninstall") {
		t.Fatalf("second install err = %v, want it to say the service is installed and how to replace it", err)
	}
	if again, err := os.ReadFile(h.unitPath()); err != nil || !bytes.Equal(again, first) {
		t.Errorf("second install changed or removed the unit (err %v)", err)
	}
}

// TestServiceUninstallIdempotent: install then uninstall leaves no unit and no enable link and names what it kept;
// uninstalling again (or never having installed) is not an error.
func TestServiceUninstallIdempotent(t *testing.T) {
	h := newSystemdHome(t)
	out, err := h.run(t, "uninstall")
	if err != nil || !strings.Contains(out, "not installed") {
		t.Fatalf("uninstall before install = %v, output %q; want a note that nothing is installed", err, out)
	}
	if out, err := h.run(t, "install", "--executable", h.exe); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	out, err = h.run(t, "uninstall")
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	unitDir := filepath.Dir(h.unitPath())
	for _, p := range []string{h.unitPath(), filepath.Join(unitDir, "default.target.wants", "agentidd.service")} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("uninstall left %s (stat err %v)", p, err)
		}
	}
	for _, want := range []string{"config " + h.config, "state and audit log " + filepath.Join(h.home, ".local", "state", "agentidd")} {
		if !strings.Contains(out, want) {
			t.Errorf("uninstall output does not name what it kept (%q):\n%s", want, out)
		}
	}
	if out, err := h.run(t, "uninstall"); err != nil || !strings.Contains(out, "not installed") {
		t.Fatalf("second uninstall = %v, output %q", err, out)
	}
}

// TestServiceInstallChecksExecutable: the unit must name a binary that exists, that only its owner can replace, and
// that outlives the install; each refused install writes no unit.
func TestServiceInstallChecksExecutable(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, h *systemdHome) []string
		wantErr string
	}{
		{name: "missing", setup: func(t *testing.T, h *systemdHome) []string {
			return []string{"--executable", filepath.Join(h.home, "bin", "agentid")}
		}, wantErr: "no such file"},
		{name: "not executable", setup: func(t *testing.T, h *systemdHome) []string {
			if err := os.Chmod(h.exe, 0o644); err != nil {
				t.Fatal(err)
			}
			return []string{"--executable", h.exe}
		}, wantErr: "not executable"},
		{name: "directory", setup: func(t *testing.T, h *systemdHome) []string {
			return []string{"--executable", filepath.Dir(h.exe)}
		}, wantErr: "not a regular file"},
		{name: "world-writable file", setup: func(t *testing.T, h *systemdHome) []string {
			if err := os.Chmod(h.exe, 0o777); err != nil {
				t.Fatal(err)
			}
			return []string{"--executable", h.exe}
		}, wantErr: "writable by every user"},
		{name: "world-writable directory", setup: func(t *testing.T, h *systemdHome) []string {
			if err := os.Chmod(filepath.Dir(h.exe), 0o777); err != nil {
				t.Fatal(err)
			}
			return []string{"--executable", h.exe}
		}, wantErr: "every user can write to"},
		// A symlink in a safe directory to a binary in one everyone can write: whoever writes there swaps the binary.
		{name: "symlink into a world-writable directory", setup: func(t *testing.T, h *systemdHome) []string {
			shared := filepath.Join(h.home, "shared")
			if err := os.Mkdir(shared, 0o755); err != nil {
				t.Fatal(err)
			}
			real := filepath.Join(shared, "agentidd")
			if err := os.Rename(h.exe, real); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(shared, 0o777); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(real, h.exe); err != nil {
				t.Fatal(err)
			}
			return []string{"--executable", h.exe}
		}, wantErr: "every user can write to"},
		// The test binary lives in go's temporary build directory, as a `go run` one does.
		{name: "default binary in a temporary directory", setup: func(t *testing.T, h *systemdHome) []string {
			return nil
		}, wantErr: "temporary directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if runtime.GOOS == "windows" && strings.Contains(tt.name, "writable") {
				t.Skip("no POSIX modes")
			}
			h := newSystemdHome(t)
			_, err := h.run(t, append([]string{"install"}, tt.setup(t, h)...)...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("install err = %v, want it to mention %q", err, tt.wantErr)
			}
			if _, err := os.Lstat(h.unitPath()); !os.IsNotExist(err) {
				t.Errorf("a refused install wrote %s", h.unitPath())
			}
		})
	}
}

// TestPickExecutable: a binary reached through a symlink (Homebrew's bin/, a Nix profile, ~/.local/bin) is
// installed under the link, which survives upgrades, not under the versioned file os.Executable resolves to.
func TestPickExecutable(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("symlinks need privileges on Windows")
	}
	dir := t.TempDir()
	real := filepath.Join(dir, "Cellar", "agentidd", "1.0", "bin", "agentidd")
	link := filepath.Join(dir, "bin", "agentidd")
	other := filepath.Join(dir, "other", "agentidd")
	for _, p := range []string{real, other} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", filepath.Dir(link))
	tests := []struct{ name, arg0, want string }{
		{"run by name through PATH", "agentidd", link},
		{"run by path", link, link},
		{"run as the real file", real, real},
		{"a different agentidd on PATH", other, real},
		{"not found", "agentidd-nope", real},
	}
	for _, tt := range tests {
		if got := pickExecutable(real, tt.arg0); got != tt.want {
			t.Errorf("%s: pickExecutable(%q) = %q, want %q", tt.name, tt.arg0, got, tt.want)
		}
	}
}
