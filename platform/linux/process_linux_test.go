//go:build linux

package linux

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/agentidd/agentidd/platform"
)

func TestInspectSelf(t *testing.T) {
	ins := NewProcessInspector()
	p, err := ins.Inspect(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if p.ExePath != exe {
		t.Errorf("ExePath = %q, want %q", p.ExePath, exe)
	}
	if p.PPID != os.Getppid() || p.UID != os.Geteuid() || p.PID != os.Getpid() {
		t.Errorf("got %+v, want ppid %d uid %d", p, os.Getppid(), os.Geteuid())
	}
	if p.StartTime == 0 {
		t.Error("StartTime is 0")
	}
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	got, err := ins.ExeDigest(p.ExePath)
	if err != nil {
		t.Fatal(err)
	}
	if got != hex.EncodeToString(want[:]) {
		t.Errorf("ExeDigest = %s, want %x", got, want)
	}
	// The running image hashes the same when, as here, nothing is mounted over its path.
	if img, err := ins.ExeDigest(p.ImageToHash()); err != nil || img != got || p.Image != fmt.Sprintf("/proc/%d/exe", p.PID) {
		t.Errorf("image %q hashes to %s (%v), want %s", p.Image, img, err, got)
	}
}

func TestRegisteredInspector(t *testing.T) {
	if _, err := platform.NewProcessInspector().Inspect(os.Getpid()); err != nil {
		t.Fatalf("platform.NewProcessInspector on linux: %v", err)
	}
}

func TestInspectGoneProcess(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skip("no `true` binary:", err)
	}
	_, err := NewProcessInspector().Inspect(cmd.Process.Pid)
	if !errors.Is(err, platform.ErrNoSuchProcess) {
		t.Fatalf("Inspect(reaped pid) = %v, want ErrNoSuchProcess", err)
	}
	if _, err := NewProcessInspector().Inspect(-1); !errors.Is(err, platform.ErrNoSuchProcess) {
		t.Fatalf("Inspect(-1) = %v, want ErrNoSuchProcess", err)
	}
}

func TestAncestors(t *testing.T) {
	// A child's ancestors start with us and then our own parent.
	cmd := exec.Command("sleep", "10")
	if err := cmd.Start(); err != nil {
		t.Skip("no `sleep` binary:", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	got, err := NewProcessInspector().Ancestors(cmd.Process.Pid, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != os.Getpid() || got[1] != os.Getppid() {
		t.Fatalf("Ancestors = %v, want [%d %d]", got, os.Getpid(), os.Getppid())
	}
	all, err := NewProcessInspector().Ancestors(os.Getpid(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) == 0 || all[len(all)-1] != 1 && os.Getpid() != 1 {
		// In a pid namespace the chain may end at the namespace's init,
		// which also has pid 1.
		t.Fatalf("chain %v does not end at pid 1", all)
	}
}

// fakeProc writes a fake /proc/<pid> so parsing is checked against odd
// command names without needing such a process.
func fakeProc(t *testing.T, pid int, stat, status, exe string) string {
	root := t.TempDir()
	dir := filepath.Join(root, strconv.Itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]string{"stat": stat, "status": status} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if exe != "" {
		if err := os.Symlink(exe, filepath.Join(dir, "exe")); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestInspectParsing(t *testing.T) {
	const status = "Name:\tx\nUid:\t1000\t1001\t1000\t1000\nGid:\t5\t5\t5\t5\n"
	stat := func(comm string) string {
		return "42 (" + comm + ") S 7 42 42 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 18446744073709551615\n"
	}
	tests := []struct {
		name, stat, status, exe string
		want                    platform.Process
		wantErr                 bool
	}{
		{"plain", stat("agent"), status, "/usr/bin/agent", platform.Process{PID: 42, PPID: 7, UID: 1001, ExePath: "/usr/bin/agent", StartTime: 987654}, false},
		{"paren and spaces in comm", stat("a) S 9 9 (b"), status, "/x", platform.Process{PID: 42, PPID: 7, UID: 1001, ExePath: "/x", StartTime: 987654}, false},
		{"truncated stat", "42 (x) S 7 42", status, "/x", platform.Process{}, true},
		{"no paren", "42 x S 7", status, "/x", platform.Process{}, true},
		{"no uid line", stat("x"), "Name:\tx\n", "/x", platform.Process{}, true},
		{"no exe (kernel thread)", stat("kworker"), status, "", platform.Process{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := fakeProc(t, 42, tt.stat, tt.status, tt.exe)
			ins := newProcessInspector(root)
			got, err := ins.Inspect(42)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !tt.wantErr {
				tt.want.Image = filepath.Join(root, "42", "exe") // what opens the running image
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
