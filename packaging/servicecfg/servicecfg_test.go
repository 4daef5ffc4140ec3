package servicecfg

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kardianos/service"
)

func TestServiceConfig(t *testing.T) {
	tests := []struct {
		name    string
		p       Params
		wantErr string
		check   func(t *testing.T, c *service.Config)
	}{
		{
			name: "linux user unit",
			p:    Params{GOOS: "linux", Executable: "/home/u/.local/bin/agentidd", ConfigPath: "/home/u/.config/agentidd/config.toml", WritablePaths: []string{"/srv/agentidd state"}},
			check: func(t *testing.T, c *service.Config) {
				wantOpt(t, c, "UserService", true)
				wantOpt(t, c, "Restart", "on-failure")
				unit, _ := c.Option["SystemdScript"].(string)
				for _, want := range []string{"Restart={{Restart}}\n", "ReadWritePaths=-\"/srv/agentidd state\"\n", "WantedBy=default.target\n", "UMask=0077\n"} {
					if !strings.Contains(unit, want) {
						t.Errorf("SystemdScript lacks %q", want)
					}
				}
				if c.UserName != "" {
					t.Errorf("UserName = %q; a user unit must not switch user", c.UserName)
				}
			},
		},
		{
			name: "darwin launch agent",
			p:    Params{GOOS: "darwin", Executable: "/opt/homebrew/bin/agentidd", ConfigPath: "/Users/u/Library/Application Support/agentidd/config.toml", Home: "/Users/u"},
			check: func(t *testing.T, c *service.Config) {
				wantOpt(t, c, "UserService", true)
				wantOpt(t, c, "RunAtLoad", true)
				wantOpt(t, c, "LogDirectory", "/Users/u/Library/Logs/agentidd")
				plist, _ := c.Option["LaunchdConfig"].(string)
				if !strings.Contains(plist, "<key>SuccessfulExit</key>") {
					t.Error("LaunchdConfig does not restart on crash only")
				}
			},
		},
		{
			name: "windows service as the user",
			p:    Params{GOOS: "windows", Executable: `C:\Users\u\AppData\Local\Programs\agentidd\agentidd.exe`, ConfigPath: `C:\Users\u\AppData\Roaming\agentidd\config.toml`, WindowsUser: `CORP\u`, WindowsSID: testSID},
			check: func(t *testing.T, c *service.Config) {
				if c.UserName != `CORP\u` {
					t.Errorf("UserName = %q", c.UserName)
				}
				if c.DisplayName != `agentidd (CORP\u)` {
					t.Errorf("DisplayName = %q", c.DisplayName)
				}
				wantOpt(t, c, "OnFailure", "restart")
				wantOpt(t, c, "OnFailureDelayDuration", "5s")
				wantOpt(t, c, "OnFailureResetPeriod", 86400)
				wantOpt(t, c, "StartType", "automatic")
				if _, ok := c.Option["Password"]; ok {
					t.Error("Config must not carry a password")
				}
			},
		},
		{name: "relative executable", p: Params{GOOS: "linux", Executable: "agentidd", ConfigPath: "/c.toml"}, wantErr: "not absolute"},
		{name: "relative config", p: Params{GOOS: "linux", Executable: "/bin/agentidd", ConfigPath: "c.toml"}, wantErr: "not absolute"},
		{name: "systemd specifier", p: Params{GOOS: "linux", Executable: "/bin/agentidd", ConfigPath: "/home/u/100%/c.toml"}, wantErr: "cannot carry"},
		// systemd refuses the whole unit ("Executable name contains special characters"), so the service would never start.
		{name: "quote in executable", p: Params{GOOS: "linux", Executable: "/home/u/John's tools/agentidd", ConfigPath: "/c.toml"}, wantErr: "contains '"},
		{name: "systemd variable", p: Params{GOOS: "linux", Executable: "/bin/$X/agentidd", ConfigPath: "/c.toml"}, wantErr: "cannot carry"},
		{name: "newline injects directives", p: Params{GOOS: "darwin", Executable: "/bin/agentidd", ConfigPath: "/c.toml\n<key>", Home: "/Users/u"}, wantErr: "control character"},
		{name: "bad writable path", p: Params{GOOS: "linux", Executable: "/bin/agentidd", ConfigPath: "/c.toml", WritablePaths: []string{`/a"b`}}, wantErr: "cannot carry"},
		{name: "windows without account", p: Params{GOOS: "windows", Executable: `C:\a.exe`, ConfigPath: `C:\c.toml`}, wantErr: "LocalSystem"},
		{name: "windows unix path", p: Params{GOOS: "windows", Executable: "/bin/agentidd", ConfigPath: `C:\c.toml`, WindowsUser: "u", WindowsSID: testSID}, wantErr: "not absolute"},
		{name: "windows without SID", p: Params{GOOS: "windows", Executable: `C:\a.exe`, ConfigPath: `C:\c.toml`, WindowsUser: "u"}, wantErr: "SID"},
		{name: "darwin relative home", p: Params{GOOS: "darwin", Executable: "/bin/agentidd", ConfigPath: "/c.toml", Home: "u"}, wantErr: "home"},
		{name: "unsupported os", p: Params{GOOS: "plan9", Executable: "/bin/agentidd", ConfigPath: "/c.toml"}, wantErr: "no per-user service"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Config(tt.p)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to mention %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			wantName := "agentidd"
			if tt.p.GOOS == "windows" {
				wantName = "agentidd-" + testSID
			}
			if c.Name != wantName || c.Description != Description || c.Executable != tt.p.Executable {
				t.Errorf("Name %q, Description %q, Executable %q", c.Name, c.Description, c.Executable)
			}
			if want := []string{"run", "--config", tt.p.ConfigPath}; !reflect.DeepEqual(c.Arguments, want) {
				t.Errorf("Arguments = %q, want %q", c.Arguments, want)
			}
			tt.check(t, c)
		})
	}
}

const testSID = "S-1-5-21-1004336348-1177238915-682003330-512"

// Windows services share one machine-wide namespace: two users' services must not collide, and nothing but a SID may
// reach the name.
func TestServiceName(t *testing.T) {
	a, errA := ServiceName("windows", testSID)
	b, errB := ServiceName("windows", "S-1-5-21-1004336348-1177238915-682003330-1001")
	if errA != nil || errB != nil || a == b || a != "agentidd-"+testSID {
		t.Errorf("two users: %q (%v), %q (%v)", a, errA, b, errB)
	}
	for _, bad := range []string{"", "S-1-", "S-1-5--21", "S-1-5-21 x", `S-1-5\..`, "CORP\\u", "S-1-5-21-1\nBinPath"} {
		if name, err := ServiceName("windows", bad); err == nil {
			t.Errorf("ServiceName(%q) = %q, want an error", bad, name)
		}
	}
	for _, goos := range []string{"linux", "darwin"} {
		if name, err := ServiceName(goos, ""); err != nil || name != "agentidd" {
			t.Errorf("%s: %q, %v", goos, name, err)
		}
	}
}

func wantOpt(t *testing.T, c *service.Config, key string, want any) {
	t.Helper()
	if got, ok := c.Option[key]; !ok || got != want {
		t.Errorf("Option[%q] = %#v, want %#v", key, got, want)
	}
}

func TestCheckPlatform(t *testing.T) {
	tests := []struct {
		goos, platform string
		ok             bool
	}{
		{"linux", "linux-systemd", true},
		{"linux", "unix-systemv", false},
		{"linux", "", false},
		{"darwin", "darwin-launchd", true},
		{"windows", "windows-service", true},
		{"windows", "linux-systemd", false},
		{"freebsd", "freebsd", false},
	}
	for _, tt := range tests {
		if err := CheckPlatform(tt.goos, tt.platform); (err == nil) != tt.ok {
			t.Errorf("CheckPlatform(%q, %q) = %v, want ok=%v", tt.goos, tt.platform, err, tt.ok)
		}
	}
}

const validConfig = `authority = "https://login.microsoftonline.com/11111111-1111-1111-1111-111111111111"
client_id = "22222222-2222-2222-2222-222222222222"
blueprint_app_id = "33333333-3333-3333-3333-333333333333"
`

func TestResolveConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	plain := write("plain.toml", validConfig)
	moved := write("moved.toml", validConfig+"state_dir = \"state\"\nsocket = \"/run/x/agentidd.sock\"\n")
	invalid := write("invalid.toml", validConfig+"colour = \"blue\"\n")
	t.Setenv("XDG_STATE_HOME", "/xdg/state")

	tests := []struct {
		name      string
		path      string
		wantErr   string
		wantWrite []string
	}{
		{name: "defaults", path: plain, wantWrite: []string{dir, "/xdg/state/agentidd"}},
		{name: "state and socket moved", path: moved, wantWrite: []string{dir, filepath.Join(dir, "state"), "/run/x"}},
		{name: "missing", path: filepath.Join(dir, "nope.toml"), wantErr: "refusing to install"},
		{name: "invalid", path: invalid, wantErr: "unknown key"},
		{name: "empty", path: "", wantErr: "no config path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			abs, writable, err := ResolveConfig(tt.path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to mention %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if abs != tt.path {
				t.Errorf("abs = %q, want %q", abs, tt.path)
			}
			if !reflect.DeepEqual(writable, tt.wantWrite) {
				t.Errorf("writable = %q, want %q", writable, tt.wantWrite)
			}
		})
	}

	t.Run("relative path made absolute", func(t *testing.T) {
		t.Chdir(dir)
		abs, _, err := ResolveConfig("plain.toml")
		if err != nil || abs != plain {
			t.Fatalf("ResolveConfig(relative) = %q, %v; want %q", abs, err, plain)
		}
	})
}

func TestSubstituteRefusesDrift(t *testing.T) {
	tests := []struct {
		name, src string
		reps      []replacement
		wantErr   string
	}{
		{name: "missing marker", src: "a\n", reps: []replacement{{"b\n", "c\n"}}, wantErr: "found it 0 times"},
		{name: "duplicate marker", src: "b\nb\n", reps: []replacement{{"b\n", "c\n"}}, wantErr: "found it 2 times"},
		{name: "delimiters in source", src: "{{x}}\n", wantErr: "template delimiters"},
		{name: "ok", src: "a\nb\n", reps: []replacement{{"b\n", "c\n"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := substitute("test", tt.src, tt.reps)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || out != "a\nc\n" {
				t.Fatalf("substitute = %q, %v", out, err)
			}
		})
	}
}

// TestSystemdInstallRendersVerifiedUnit runs kardianos' real systemd Install (its template engine is not exported)
// against a throw-away HOME with a fake systemctl on PATH, then checks the unit it wrote with systemd-analyze.
func TestSystemdInstallRendersVerifiedUnit(t *testing.T) {
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

	root := t.TempDir()
	home, bin, rt := filepath.Join(root, "home"), filepath.Join(root, "bin"), filepath.Join(root, "run")
	for _, d := range []string{home, bin, rt} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	calls := filepath.Join(root, "systemctl.calls")
	writeExec(t, filepath.Join(bin, "systemctl"), "#!/bin/sh\necho \"$@\" >> '"+calls+"'\n")
	exe := filepath.Join(root, "agentidd")
	writeExec(t, exe, "#!/bin/sh\n")
	realPath := os.Getenv("PATH")
	t.Setenv("PATH", bin+string(os.PathListSeparator)+realPath)
	t.Setenv("HOME", home)
	t.Setenv("XDG_RUNTIME_DIR", rt)
	t.Setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path="+filepath.Join(rt, "no-bus"))

	// A quote and a space in an argument are fine once double-quoted; systemd-analyze below checks the unit loads.
	cfgPath := filepath.Join(home, "John's config", "config.toml")
	c, err := Config(Params{GOOS: "linux", Executable: exe, ConfigPath: cfgPath, WritablePaths: []string{filepath.Join(root, "my state")}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := systemd.New(NewProgram(func(context.Context) error { return nil }, func(int) {}), c)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Install(); err != nil {
		t.Fatalf("Install: %v", err)
	}

	unitPath := filepath.Join(home, ".config", "systemd", "user", "agentidd.service")
	unit, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatalf("kardianos wrote no user unit: %v", err)
	}
	for _, want := range []string{
		"Description=" + Description + "\n",
		"ExecStart=" + exe + ` "run" "--config" "` + cfgPath + "\"\n",
		"Restart=on-failure\n",
		"ReadWritePaths=-\"" + filepath.Join(root, "my state") + "\"\n",
		"ProtectSystem=strict\n",
		"WantedBy=default.target\n",
	} {
		if !bytes.Contains(unit, []byte(want)) {
			t.Errorf("rendered unit lacks %q:\n%s", want, unit)
		}
	}
	gotCalls, _ := os.ReadFile(calls)
	if want := "enable --user agentidd.service\ndaemon-reload --user\n"; string(gotCalls) != want {
		t.Errorf("systemctl calls = %q, want %q", gotCalls, want)
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed; rendered unit checked textually only")
	}
	t.Setenv("PATH", realPath)
	out, err := exec.Command(analyze, "--user", "verify", unitPath).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze --user verify: %v\n%s", err, out)
	}
}

func writeExec(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o700); err != nil {
		t.Fatal(err)
	}
}

func TestProgram(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name     string
		run      func(ctx context.Context) error
		stop     bool
		wantExit bool
		wantErr  string
	}{
		{name: "stopped by the service manager", run: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }, stop: true},
		{name: "daemon fails on its own", run: func(context.Context) error { return boom }, wantExit: true, wantErr: "boom"},
		{name: "daemon returns early without error", run: func(context.Context) error { return nil }, wantExit: true, wantErr: "unexpectedly"},
		{name: "shutdown error reported", run: func(ctx context.Context) error { <-ctx.Done(); return boom }, stop: true, wantErr: "boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var exited atomic.Int32
			exitCh := make(chan struct{})
			p := NewProgram(tt.run, func(code int) { exited.Store(int32(code)); close(exitCh) })
			if err := p.Stop(nil); err != nil {
				t.Fatalf("Stop before Start: %v", err)
			}
			if err := p.Start(nil); err != nil {
				t.Fatal(err)
			}
			if err := p.Start(nil); err == nil {
				t.Error("second Start succeeded")
			}
			if tt.wantExit {
				select {
				case <-exitCh:
				case <-time.After(5 * time.Second):
					t.Fatal("exit not called")
				}
				if exited.Load() != 1 {
					t.Errorf("exit code %d, want 1", exited.Load())
				}
			}
			if tt.stop {
				if err := p.Stop(nil); err != nil {
					t.Fatal(err)
				}
				select {
				case <-exitCh:
					t.Error("exit called after a requested stop")
				default:
				}
			}
			err := p.Err()
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("Err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestRunManagedOutsideSCM(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("on Windows the answer depends on how the test was started")
	}
	called := false
	handled, err := RunManaged(func(context.Context) error { called = true; return nil })
	if handled || err != nil || called {
		t.Fatalf("RunManaged = %v, %v (called %v); want not handled off Windows", handled, err, called)
	}
}
