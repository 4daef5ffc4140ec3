package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/kardianos/service"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/agentidd/agentidd/packaging/servicecfg"
)

// geteuid is a seam so the refusal to install as root is testable without being root.
var geteuid = os.Geteuid

// serviceSystem is a seam: tests drive kardianos' real systemd backend (with a stand-in systemctl) on machines whose
// PID 1 is not systemd, where kardianos would pick SysV.
var serviceSystem = service.ChosenSystem

// serviceCmd is `agentidd service install|uninstall|start|stop|status`: the daemon as a per-user service
// (systemd --user unit, launchd LaunchAgent, Windows service running as the user). The pure parts live in
// packaging/servicecfg.
func serviceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "service",
		Short: "Install and control agentidd as a per-user service (systemd --user, launchd agent, Windows service)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(serviceInstallCmd(g), serviceControlCmd(g, "uninstall", "Stop and remove the service (state and config are kept)"),
		serviceControlCmd(g, "start", "Start the service"), serviceControlCmd(g, "stop", "Stop the service"),
		serviceControlCmd(g, "status", "Say whether the service is installed and running"))
	return cmd
}

func serviceInstallCmd(g *globals) *cobra.Command {
	var executable string
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install the service to run `agentidd run --config <abs path>` at login; refuses a missing or invalid config",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, err := g.configFile()
			if err != nil {
				return err
			}
			cfgPath, writable, err := servicecfg.ResolveConfig(path)
			if err != nil {
				return err
			}
			if runtime.GOOS != "windows" && geteuid() == 0 {
				return errors.New("refusing to install as root: run `agentidd service install` as the user whose agents it serves")
			}
			explicit := executable != ""
			if !explicit {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("finding the agentidd binary (pass --executable): %w", err)
				}
				executable = pickExecutable(exe, os.Args[0])
			}
			if err := checkExecutable(executable, explicit, cmd.ErrOrStderr()); err != nil {
				return err
			}
			home, err := os.UserHomeDir()
			if err != nil {
				return fmt.Errorf("finding the home directory: %w", err)
			}
			p := servicecfg.Params{GOOS: runtime.GOOS, Executable: executable, ConfigPath: cfgPath, Home: home, WritablePaths: writable}
			if runtime.GOOS == "windows" {
				u, err := user.Current()
				if err != nil {
					return fmt.Errorf("finding the current account: %w", err)
				}
				p.WindowsUser, p.WindowsSID = u.Username, u.Uid // on Windows, Uid is the SID
			}
			sc, err := servicecfg.Config(p)
			if err != nil {
				return err
			}
			if err := checkServicePlatform(); err != nil {
				return err
			}
			unitPath := servicecfg.UnitPath(runtime.GOOS, home)
			if unitPath != "" {
				// Lstat: kardianos would follow a dangling symlink here and write the unit wherever it points.
				if _, err := os.Lstat(unitPath); err == nil {
					return fmt.Errorf("already installed (%s): to change the config path or binary, run `agentidd service uninstall`, then install again", unitPath)
				}
			}
			if runtime.GOOS == "linux" {
				if err := servicecfg.CheckUserManager(os.Getenv("XDG_RUNTIME_DIR")); err != nil {
					return err
				}
			}
			// Create the directories the unit makes writable (systemd refuses to start a unit whose ReadWritePaths
			// are missing) and the macOS log directory (launchd creates log files but not their directory).
			dirs := writable
			if d := servicecfg.LogDir(runtime.GOOS, home); d != "" {
				dirs = append(dirs, d)
			}
			if runtime.GOOS == "windows" {
				pw, err := readPassword(cmd.InOrStdin(), cmd.ErrOrStderr(), p.WindowsUser)
				if err != nil {
					return err
				}
				sc.Option["Password"] = pw
			} else {
				for _, d := range dirs {
					if err := os.MkdirAll(d, 0o700); err != nil {
						return fmt.Errorf("creating %s: %w", d, err)
					}
				}
			}
			if unitPath != "" {
				// kardianos makes this directory 0777 and (on macOS) the plist 0666, less the umask: under a lax
				// umask another local user could rewrite what runs as this user at every login.
				if err := os.MkdirAll(filepath.Dir(unitPath), 0o700); err != nil {
					return fmt.Errorf("creating %s: %w", filepath.Dir(unitPath), err)
				}
				// MkdirAll leaves a directory that already exists as it is: one others can write lets them rename
				// their own unit over ours.
				if err := narrowDir(filepath.Dir(unitPath), cmd.ErrOrStderr()); err != nil {
					return err
				}
			}
			s, err := newService(sc)
			if err != nil {
				return err
			}
			if err := s.Install(); err != nil {
				// kardianos writes the file before it runs systemctl; left behind, it would make every retry say
				// "already exists" and `uninstall` fail on the same systemctl error.
				if unitPath != "" {
					removePartialInstall(unitPath)
				}
				return fmt.Errorf("installing the %s service: %w", s.Platform(), err)
			}
			if unitPath != "" {
				if err := os.Chmod(unitPath, 0o644); err != nil {
					return fmt.Errorf("installed, but could not make %s writable only by you: %w", unitPath, err)
				}
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "Installed %s service %q: %s run --config %s\n", s.Platform(), sc.Name, executable, cfgPath)
			fmt.Fprintln(w, "It starts at your next login; start it now with `agentidd service start`.")
			fmt.Fprintln(w, logsHint())
			return nil
		},
	}
	cmd.Flags().StringVar(&executable, "executable", "", "absolute path of the agentidd binary the service runs (default: this binary)")
	return cmd
}

func serviceControlCmd(g *globals, action, short string) *cobra.Command {
	return &cobra.Command{
		Use:   action,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkServicePlatform(); err != nil {
				return err
			}
			if runtime.GOOS == "linux" {
				if err := servicecfg.CheckUserManager(os.Getenv("XDG_RUNTIME_DIR")); err != nil {
					return err
				}
			}
			cc, err := controlConfig()
			if err != nil {
				return err
			}
			s, err := newService(cc)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			switch action {
			case "status":
				st, err := s.Status()
				switch {
				case errors.Is(err, service.ErrNotInstalled):
					fmt.Fprintln(w, "agentidd service: not installed (run `agentidd service install`)")
					return nil
				case err != nil:
					return fmt.Errorf("service status: %w", err)
				case st == service.StatusRunning:
					fmt.Fprintln(w, "agentidd service: running")
				case st == service.StatusStopped:
					fmt.Fprintln(w, "agentidd service: installed, stopped (run `agentidd service start`)")
				default:
					fmt.Fprintln(w, "agentidd service: unknown state")
				}
				fmt.Fprintln(w, logsHint())
				return nil
			case "uninstall":
				// kardianos fails on a missing unit (systemctl disable, or removing the plist) with an error that
				// does not say why; uninstalling what is not there is done already.
				if home, err := os.UserHomeDir(); err == nil {
					if unit := servicecfg.UnitPath(runtime.GOOS, home); unit != "" {
						if _, err := os.Lstat(unit); errors.Is(err, fs.ErrNotExist) {
							fmt.Fprintf(w, "agentidd service: not installed (no %s); nothing to remove.\n", unit)
							if runtime.GOOS == "linux" {
								fmt.Fprintln(w, "A packaged unit you enabled yourself is turned off with `systemctl --user disable --now agentidd`.")
							}
							return nil
						}
					}
				}
				// Stop first so no daemon keeps the socket after its unit is gone; "not running" is fine here.
				_ = s.Stop()
				if err := s.Uninstall(); err != nil {
					return fmt.Errorf("uninstalling the service: %w", err)
				}
				fmt.Fprintln(w, "Service removed.")
				fmt.Fprintln(w, keptHint(g))
				return nil
			case "start":
				err = s.Start()
			case "stop":
				err = s.Stop()
			}
			if err != nil {
				return fmt.Errorf("service %s: %w", action, err)
			}
			return nil
		},
	}
}

// controlConfig names the current user's installed service; start/stop/status/uninstall need only where it lives,
// not what it runs.
func controlConfig() (*service.Config, error) {
	sid := ""
	if runtime.GOOS == "windows" {
		u, err := user.Current()
		if err != nil {
			return nil, fmt.Errorf("finding the current account: %w", err)
		}
		sid = u.Uid // on Windows, Uid is the SID
	}
	name, err := servicecfg.ServiceName(runtime.GOOS, sid)
	if err != nil {
		return nil, err
	}
	c := &service.Config{Name: name}
	if runtime.GOOS != "windows" {
		c.Option = service.KeyValue{"UserService": true}
	}
	return c, nil
}

// pickExecutable prefers the path the user ran over os.Executable's: on Linux that resolves symlinks, so a
// Homebrew, Nix or ~/.local/bin link would pin the unit to a versioned file that the next upgrade deletes.
func pickExecutable(exe, arg0 string) string {
	var invoked string
	if strings.ContainsRune(arg0, filepath.Separator) {
		invoked, _ = filepath.Abs(arg0)
	} else if p, err := exec.LookPath(arg0); err == nil {
		invoked, _ = filepath.Abs(p)
	}
	if invoked == "" || invoked == exe {
		return exe
	}
	a, errA := os.Stat(invoked)
	b, errB := os.Stat(exe)
	if errA != nil || errB != nil || !os.SameFile(a, b) {
		return exe
	}
	return invoked
}

// checkExecutable refuses a binary the service manager could not start at every login, or that someone else
// could swap for their own code: the service runs it as this user, holding the user's sign-in.
func checkExecutable(path string, explicit bool, warn io.Writer) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("the service's binary: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("the service's binary %s is not a regular file", path)
	}
	if runtime.GOOS != "windows" {
		if fi.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("the service's binary %s is not executable", path)
		}
		if fi.Mode().Perm()&0o002 != 0 {
			return fmt.Errorf("the service's binary %s is writable by every user; fix its mode (chmod o-w) or install it elsewhere", path)
		}
		// In a world-writable directory without the sticky bit anyone can replace the file: check the directory of the
		// path the unit names and, when that is a symlink, of the file it leads to (whoever can write there swaps the
		// binary under the link).
		dirs := []string{filepath.Dir(path)}
		if real, err := filepath.EvalSymlinks(path); err == nil && filepath.Dir(real) != dirs[0] {
			dirs = append(dirs, filepath.Dir(real))
		}
		for _, dir := range dirs {
			if di, err := os.Stat(dir); err == nil && di.Mode().Perm()&0o002 != 0 && di.Mode()&fs.ModeSticky == 0 {
				return fmt.Errorf("the service's binary is in %s, which every user can write to; install it elsewhere", dir)
			}
		}
	}
	if inTempDir(path) {
		if !explicit {
			return fmt.Errorf("this agentidd runs from a temporary directory (%s; `go run`?) that will not outlive it: "+
				"install the binary, then pass --executable PATH", path)
		}
		fmt.Fprintf(warn, "Warning: %s is in a temporary directory; the service fails once it is cleaned up. Prefer a stable path such as ~/.local/bin/agentidd.\n", path)
	}
	return nil
}

// narrowDir takes group and other write access off dir, saying so: what sits in it runs as the user at every login.
func narrowDir(dir string, warn io.Writer) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o022 == 0 {
		return nil
	}
	if err := os.Chmod(dir, fi.Mode().Perm()&^0o022); err != nil {
		return fmt.Errorf("%s is writable by other users (mode %v) and could not be narrowed: %w; fix it (chmod go-w) and install again", dir, fi.Mode().Perm(), err)
	}
	fmt.Fprintf(warn, "Note: %s was writable by other users (mode %v); removed their write access.\n", dir, fi.Mode().Perm())
	return nil
}

func inTempDir(path string) bool {
	// `go run` builds under $GOTMPDIR when set, which need not be below the temp dir.
	if strings.Contains(path, string(filepath.Separator)+"go-build") {
		return true
	}
	dirs := []string{os.TempDir()}
	if runtime.GOOS != "windows" {
		dirs = append(dirs, "/tmp", "/var/tmp")
	}
	for _, d := range dirs {
		if d = filepath.Clean(d); d != "" && strings.HasPrefix(path, d+string(filepath.Separator)) {
			return true
		}
	}
	return false
}

func newService(c *service.Config) (service.Service, error) {
	sys := serviceSystem()
	if sys == nil {
		return nil, errors.New("service: no service manager found")
	}
	s, err := sys.New(noopProgram{}, c)
	if err != nil {
		return nil, fmt.Errorf("service: %w", err)
	}
	return s, nil
}

// removePartialInstall undoes a failed install: the unit file this install wrote and, on systemd, an enable symlink
// that points at it (enable may succeed before daemon-reload fails).
func removePartialInstall(unitPath string) {
	_ = os.Remove(unitPath)
	if runtime.GOOS != "linux" {
		return
	}
	link := filepath.Join(filepath.Dir(unitPath), "default.target.wants", filepath.Base(unitPath))
	if target, err := os.Readlink(link); err == nil && target == unitPath {
		_ = os.Remove(link)
	}
}

func checkServicePlatform() error {
	platform := ""
	if sys := serviceSystem(); sys != nil {
		platform = sys.String()
	}
	return servicecfg.CheckPlatform(runtime.GOOS, platform)
}

// keptHint names what uninstall leaves behind, so removing it is a choice the user can act on.
func keptHint(g *globals) string {
	var kept []string
	if path, err := g.configFile(); err == nil {
		kept = append(kept, "config "+path)
		if cfg, err := g.config(); err == nil {
			kept = append(kept, "state and audit log "+cfg.StateDir)
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		if d := servicecfg.LogDir(runtime.GOOS, home); d != "" {
			kept = append(kept, "logs "+d)
		}
	}
	return "Kept: " + strings.Join(append(kept, "the data key in the OS secret store"), "; ") +
		". docs/install.md (Removing your data) says how to remove them."
}

func logsHint() string {
	switch runtime.GOOS {
	case "linux":
		return "Logs: journalctl --user -u agentidd"
	case "darwin":
		home, _ := os.UserHomeDir()
		return "Logs: " + servicecfg.LogDir("darwin", home) + "/agentidd.{out,err}.log"
	default:
		// The daemon writes no event log of its own: the service manager records start failures under System.
		return "Logs: Event Viewer > Windows Logs > System (source Service Control Manager) for start failures; " +
			"the daemon's own log: stop the service and run `agentidd run` in a console (docs/install.md)"
	}
}

// readPassword asks for the Windows account's password, which the service manager needs to start a service as
// that account. It is read without echo from a terminal, or as one line from a pipe, and is never printed.
func readPassword(in io.Reader, prompt io.Writer, account string) (string, error) {
	var pw string
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprintf(prompt, "Password of %s (the service runs as this account): ", account)
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(prompt)
		if err != nil {
			return "", fmt.Errorf("reading the password: %w", err)
		}
		pw = string(b)
	} else {
		line, err := bufio.NewReader(in).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("reading the password from stdin: %w", err)
		}
		pw = strings.TrimRight(line, "\r\n")
	}
	if pw == "" {
		return "", errors.New("an empty password cannot start a Windows service; see docs/install.md")
	}
	return pw, nil
}

// noopProgram satisfies kardianos for install and control; the daemon itself runs via `agentidd run`.
type noopProgram struct{}

func (noopProgram) Start(service.Service) error { return nil }
func (noopProgram) Stop(service.Service) error  { return nil }
