// Package servicecfg turns "run agentidd for this user" into a kardianos/service configuration: a systemd --user
// unit on Linux, a LaunchAgent on macOS and a Windows service running as the user's account. Everything here is
// pure (no service manager is touched) so the per-OS output can be tested on any OS; cmd/agentidd's `service`
// command only resolves the inputs and calls kardianos.
package servicecfg

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kardianos/service"

	"github.com/agentidd/agentidd/internal/config"
	"github.com/agentidd/agentidd/packaging"
)

const (
	// Name is the service name: the systemd unit agentidd.service, the launchd label and plist
	// ~/Library/LaunchAgents/agentidd.plist. Windows services are machine-wide, so there it is ServiceName's.
	Name = "agentidd"
	// Description says what the daemon is for.
	Description = "agentidd: Entra Agent ID tokens for local AI agents"

	// Windows recovery: restart 5 s after a crash; the failure count resets after a day without one.
	windowsRestartDelay = "5s"
	windowsResetPeriod  = 24 * 60 * 60
)

// Params are the resolved inputs of one install.
type Params struct {
	// GOOS is the target OS: linux, darwin or windows.
	GOOS string
	// Executable is the absolute path of the agentidd binary the service manager starts.
	Executable string
	// ConfigPath is the absolute path of a config file that loaded cleanly.
	ConfigPath string
	// Home is the user's home directory; on macOS the logs go below it.
	Home string
	// WindowsUser is the account the Windows service runs as (DOMAIN\user or .\user). Required on Windows:
	// a LocalSystem daemon would hold every user's tokens under one identity, which is what agentidd exists to avoid.
	WindowsUser string
	// WindowsSID is that account's SID, which names the service (ServiceName).
	WindowsSID string
	// WritablePaths are directories the systemd unit must be able to write besides its own state, config and
	// runtime directories (a state_dir or socket the config moves elsewhere).
	WritablePaths []string
}

// ServiceName is the installed service's name for the user whose SID is sid (Windows) or for the current user
// (elsewhere, where user services live in the user's own namespace). Windows services share one machine-wide
// namespace: one name for everyone would stop a second user from installing theirs, and let one user's
// `agentidd service uninstall` (from an elevated prompt) remove another user's service.
func ServiceName(goos, sid string) (string, error) {
	if goos != "windows" {
		return Name, nil
	}
	if !validSID(sid) {
		return "", fmt.Errorf("the Windows service is named after the account's SID, and %q is not one", sid)
	}
	return Name + "-" + sid, nil
}

// validSID accepts the string form of a Windows SID ("S-1-5-21-…"): it becomes part of a service name, so it must
// hold nothing else.
func validSID(sid string) bool {
	if !strings.HasPrefix(sid, "S-1-") || len(sid) > 184 {
		return false
	}
	for _, part := range strings.Split(sid[len("S-1-"):], "-") {
		if part == "" {
			return false
		}
		for _, r := range part {
			if r < '0' || r > '9' {
				return false
			}
		}
	}
	return true
}

// Config builds the kardianos configuration for p. The Windows password is deliberately not a Params field:
// the caller adds it to Option["Password"] just before Install so it never sits in a value that might be printed.
func Config(p Params) (*service.Config, error) {
	if err := checkPath(p.GOOS, "executable", p.Executable); err != nil {
		return nil, err
	}
	if err := checkPath(p.GOOS, "config path", p.ConfigPath); err != nil {
		return nil, err
	}
	c := &service.Config{
		DisplayName: Name,
		Description: Description,
		Executable:  p.Executable,
		Arguments:   []string{"run", "--config", p.ConfigPath},
	}
	switch p.GOOS {
	case "linux":
		unit, err := SystemdTemplate(p.WritablePaths)
		if err != nil {
			return nil, err
		}
		c.Option = service.KeyValue{
			"UserService":   true,
			"Restart":       "on-failure",
			"SystemdScript": unit,
		}
	case "darwin":
		if !filepath.IsAbs(p.Home) {
			return nil, fmt.Errorf("home directory %q is not absolute", p.Home)
		}
		plist, err := LaunchdTemplate()
		if err != nil {
			return nil, err
		}
		c.Option = service.KeyValue{
			"UserService":   true,
			"RunAtLoad":     true,
			"LogDirectory":  LogDir("darwin", p.Home),
			"LaunchdConfig": plist,
		}
	case "windows":
		if p.WindowsUser == "" {
			return nil, errors.New("the Windows service needs the account to run as; refusing to install it as LocalSystem")
		}
		c.UserName = p.WindowsUser
		// The services console lists every user's; say whose this is.
		c.DisplayName = Name + " (" + p.WindowsUser + ")"
		c.Option = service.KeyValue{
			"StartType":              "automatic",
			"OnFailure":              "restart",
			"OnFailureDelayDuration": windowsRestartDelay,
			"OnFailureResetPeriod":   windowsResetPeriod,
		}
	default:
		return nil, fmt.Errorf("no per-user service support on %s: start `agentidd run` from your session instead", p.GOOS)
	}
	name, err := ServiceName(p.GOOS, p.WindowsSID)
	if err != nil {
		return nil, err
	}
	c.Name = name
	return c, nil
}

// LogDir is where the service's stdout and stderr go on macOS (~/Library/Logs/agentidd). Elsewhere it is ""
// because the service manager keeps them: the user journal on Linux, the Windows event log for start failures.
func LogDir(goos, home string) string {
	if goos != "darwin" {
		return ""
	}
	return filepath.Join(home, "Library", "Logs", "agentidd")
}

// CheckPlatform refuses service managers we don't write user services for. kardianos falls back to SysV init
// scripts in /etc/init.d when systemd isn't PID 1 (containers, WSL without systemd), which would be a root-owned
// system service: the opposite of what `service install` promises.
func CheckPlatform(goos, platform string) error {
	want := map[string]string{"linux": "linux-systemd", "darwin": "darwin-launchd", "windows": "windows-service"}[goos]
	if want == "" {
		return fmt.Errorf("no per-user service support on %s: start `agentidd run` from your session instead", goos)
	}
	if platform != want {
		if platform == "" {
			platform = "none"
		}
		return fmt.Errorf("found service manager %q, need %s: start `agentidd run` from your session instead", platform, want)
	}
	return nil
}

// ResolveConfig makes path absolute, loads and validates the config, and returns the directories the daemon
// will write: the config's own directory, its state_dir and, if set, the socket's directory.
func ResolveConfig(path string) (abs string, writable []string, err error) {
	if path == "" {
		return "", nil, errors.New("no config path")
	}
	abs, err = filepath.Abs(path)
	if err != nil {
		return "", nil, fmt.Errorf("config path: %w", err)
	}
	cfg, err := config.Load(abs)
	if err != nil {
		return "", nil, fmt.Errorf("refusing to install a service that would fail at start: %w", err)
	}
	seen := map[string]bool{}
	for _, d := range []string{filepath.Dir(abs), cfg.StateDir, socketDir(cfg.Socket)} {
		if d != "" && !seen[d] {
			seen[d] = true
			writable = append(writable, d)
		}
	}
	return abs, writable, nil
}

func socketDir(socket string) string {
	// A Windows pipe name is not a directory and has nothing to make writable.
	if socket == "" || strings.HasPrefix(socket, `\\.\pipe\`) {
		return ""
	}
	return filepath.Dir(socket)
}

// checkPath refuses paths the service file cannot carry faithfully. systemd expands %specifiers and $VARS even
// inside quotes and kardianos quotes arguments without escaping backslashes, so on Linux those characters would
// silently change the path; a newline anywhere would inject directives.
func checkPath(goos, what, p string) error {
	if p == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if !isAbs(goos, p) {
		return fmt.Errorf("%s %q is not absolute", what, p)
	}
	if strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("%s %q contains a control character", what, p)
	}
	if strings.Contains(p, "{{") || strings.Contains(p, "}}") {
		return fmt.Errorf("%s %q contains a template delimiter", what, p)
	}
	if goos == "linux" {
		if i := strings.IndexAny(p, `%$"\`); i >= 0 {
			return fmt.Errorf("%s %q: a systemd unit cannot carry %q in a path; move the file", what, p, p[i])
		}
		// systemd refuses to load a unit whose ExecStart binary path has a quote in it ("Executable name contains
		// special characters"), quoted or not; arguments are double-quoted, so a ' there is literal and fine.
		if what == "executable" && strings.ContainsRune(p, '\'') {
			return fmt.Errorf("%s %q: systemd cannot start a binary whose path contains ': move the file", what, p)
		}
	}
	return nil
}

// UnitPath is the file kardianos writes for the user's service: ~/.config/systemd/user/agentidd.service on Linux,
// ~/Library/LaunchAgents/agentidd.plist on macOS. Windows keeps its services in the service control manager, not in a
// file: "".
func UnitPath(goos, home string) string {
	switch goos {
	case "linux":
		return filepath.Join(home, ".config", "systemd", "user", Name+".service")
	case "darwin":
		return filepath.Join(home, "Library", "LaunchAgents", Name+".plist")
	}
	return ""
}

// CheckUserManager says whether `systemctl --user` can reach the user's systemd instance, which listens on
// $XDG_RUNTIME_DIR/systemd/private. Without it (su or sudo -u into the account, an SSH session on a host without
// pam_systemd or lingering) every systemctl call fails with a bare "exit status 1", after a unit file was written.
func CheckUserManager(runtimeDir string) error {
	const hint = "log in as this user (su and sudo -u start no user manager), or run `loginctl enable-linger $USER` " +
		"and log in again"
	if runtimeDir == "" {
		return errors.New("no systemd user manager: XDG_RUNTIME_DIR is not set; " + hint)
	}
	if _, err := os.Stat(filepath.Join(runtimeDir, "systemd", "private")); err != nil {
		return fmt.Errorf("no systemd user manager is running for you (%s): %s", err, hint)
	}
	return nil
}

// isAbs judges p by the rules of goos rather than of the host, so Windows configs are testable on Linux.
func isAbs(goos, p string) bool {
	if goos != "windows" {
		return strings.HasPrefix(p, "/")
	}
	if strings.HasPrefix(p, `\\`) {
		return true
	}
	return len(p) >= 3 && p[1] == ':' && (p[2] == '\\' || p[2] == '/') &&
		(p[0] >= 'a' && p[0] <= 'z' || p[0] >= 'A' && p[0] <= 'Z')
}

// SystemdTemplate derives the kardianos SystemdScript from packaging/systemd/agentidd.service: ExecStart,
// Description and Restart come from the kardianos config, and each extra writable path is added as
// ReadWritePaths ("-" so a directory removed later leaves a start-up error from the daemon, not a namespace failure).
func SystemdTemplate(writable []string) (string, error) {
	var rw strings.Builder
	rw.WriteString("ProtectSystem=strict\n")
	for _, d := range writable {
		if err := checkPath("linux", "writable path", d); err != nil {
			return "", err
		}
		fmt.Fprintf(&rw, "ReadWritePaths=-\"%s\"\n", d)
	}
	return substitute("systemd unit", packaging.SystemdUnit(), []replacement{
		{"Description=agentidd: Entra Agent ID tokens for local AI agents\n", "Description={{Description}}\n"},
		{"ExecStart=/usr/bin/agentidd run\n", "ExecStart={{Path | cmdEscape}}{{range Arguments}} {{. | cmd}}{{end}}\n"},
		{"Restart=on-failure\n", "Restart={{Restart}}\n"},
		{"ProtectSystem=strict\n", rw.String()},
	})
}

// LaunchdTemplate derives the kardianos LaunchdConfig from packaging/launchd/dev.agentidd.plist: the label becomes
// the service name and the placeholders become the executable, its arguments and the log paths (which kardianos
// computes as LogDirectory/agentidd.{out,err}.log, the same files the packaged plist names).
func LaunchdTemplate() (string, error) {
	src := packaging.LaunchdPlist()
	// The header comment explains the placeholders of the packaged file; it would only confuse in a rendered one.
	if i, j := strings.Index(src, "<!--"), strings.Index(src, "-->\n"); i >= 0 && j > i {
		src = src[:i] + src[j+len("-->\n"):]
	}
	return substitute("launchd plist", src, []replacement{
		{"<string>dev.agentidd</string>", "<string>{{Name | html}}</string>"},
		{"\t\t<string>__AGENTIDD__</string>\n\t\t<string>run</string>\n",
			"\t\t<string>{{Path | html}}</string>\n{{range Arguments}}\t\t<string>{{. | html}}</string>\n{{end}}"},
		{"<string>__HOME__/Library/Logs/agentidd/agentidd.out.log</string>", "<string>{{StandardOutPath | html}}</string>"},
		{"<string>__HOME__/Library/Logs/agentidd/agentidd.err.log</string>", "<string>{{StandardErrorPath | html}}</string>"},
	})
}

type replacement struct{ old, new string }

// substitute applies each replacement exactly once, so an edit to the packaged file that breaks the derivation
// fails loudly (and in tests) instead of installing a unit with a stale ExecStart.
func substitute(what, s string, reps []replacement) (string, error) {
	if strings.Contains(s, "{{") {
		return "", fmt.Errorf("packaged %s contains template delimiters", what)
	}
	for _, r := range reps {
		if n := strings.Count(s, r.old); n != 1 {
			return "", fmt.Errorf("packaged %s: expected %q once, found it %d times", what, strings.TrimSpace(r.old), n)
		}
		s = strings.Replace(s, r.old, r.new, 1)
	}
	return s, nil
}
