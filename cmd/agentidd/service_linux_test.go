package main

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestServiceInstallModes: kardianos creates the unit with 0644 and its directory with 0777, both less the umask.
// Under a lax umask another local user could then rewrite ExecStart and run code as this user at the next login;
// what install writes must never be group- or world-writable, whatever the umask.
func TestServiceInstallModes(t *testing.T) {
	h := newSystemdHome(t)
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
	if out, err := h.run(t, "install", "--executable", h.exe); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	for _, p := range []string{h.unitPath(), filepath.Dir(h.unitPath()), filepath.Join(h.home, ".config", "systemd"),
		filepath.Join(h.home, ".local", "state", "agentidd")} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o022 != 0 {
			t.Errorf("%s has mode %v: writable by others", p, fi.Mode().Perm())
		}
	}
}

// TestServiceInstallNarrowsExistingUnitDir: a unit directory that already exists writable by others (made by another
// tool, or under an old umask) is narrowed too: otherwise another user could rename their own unit over ours.
func TestServiceInstallNarrowsExistingUnitDir(t *testing.T) {
	h := newSystemdHome(t)
	dir := filepath.Dir(h.unitPath())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	out, err := h.run(t, "install", "--executable", h.exe)
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		t.Errorf("%s left with mode %v", dir, fi.Mode().Perm())
	}
}
