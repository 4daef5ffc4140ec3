//go:build linux

package linux

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dbus "github.com/godbus/dbus/v5"
	keyring "github.com/zalando/go-keyring"

	"github.com/agentidd/agentidd/platform"
)

// requireSecretService skips only when there is no session bus AND the run
// has not demanded the real Secret Service (make test sets
// AGENTIDD_REQUIRE_SECRET_SERVICE=1, so CI cannot skip these silently).
func requireSecretService(t *testing.T) {
	t.Helper()
	if os.Getenv("DBUS_SESSION_BUS_ADDRESS") == "" && os.Getenv("AGENTIDD_REQUIRE_SECRET_SERVICE") != "1" {
		t.Skip("no D-Bus session bus: run under scripts/with-secret-service (AGENTIDD_REQUIRE_SECRET_SERVICE=1 turns this skip into a failure)")
	}
}

// testItemPrefix keeps this run's items apart from other packages' tests
// sharing the same keyring.
func testItemPrefix(t *testing.T) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "test-" + hex.EncodeToString(b[:]) + "/"
}

func TestSecretServiceRoundTrip(t *testing.T) {
	requireSecretService(t)
	s, err := platform.OpenSecretStore("os", t.TempDir())
	if err != nil {
		t.Fatalf("platform.OpenSecretStore: %v", err)
	}
	if err := platform.ProbeSecretStore(s); err != nil {
		t.Fatalf("platform.ProbeSecretStore: %v", err)
	}
	if got := s.Describe(); got != "Secret Service (gnome-keyring)" {
		t.Errorf("Describe() = %q, want %q", got, "Secret Service (gnome-keyring)")
	}
	prefix := testItemPrefix(t)
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		item   string
		first  []byte
		second []byte
	}{
		{"binary data key", prefix + platform.DataKeyItem, key, append([]byte{0, 0xff, '\n'}, key...)},
		{"agent secret", prefix + platform.AgentItem("00000000-0000-0000-0000-000000000001"), []byte("s3cr3t~value"), []byte("rotated")},
		{"blueprint secret", prefix + platform.BlueprintItem("app"), bytes.Repeat([]byte("pem-ish "), 256), []byte{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Cleanup(func() { _ = s.Delete(tc.item) })
			for _, want := range [][]byte{tc.first, tc.second} {
				if err := s.Set(tc.item, want); err != nil {
					t.Fatalf("Set: %v", err)
				}
				got, err := s.Get(tc.item)
				if err != nil {
					t.Fatalf("Get: %v", err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("Get = %d bytes, want %d bytes (%x…)", len(got), len(want), got[:min(len(got), 8)])
				}
			}
			if err := s.Delete(tc.item); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if _, err := s.Get(tc.item); !errors.Is(err, platform.ErrSecretNotFound) {
				t.Fatalf("Get after Delete: err = %v, want platform.ErrSecretNotFound", err)
			}
			if err := s.Delete(tc.item); err != nil {
				t.Fatalf("second Delete: %v, want nil for an absent item", err)
			}
		})
	}
}

func TestSecretServiceMissingItem(t *testing.T) {
	requireSecretService(t)
	s, err := platform.OpenSecretStore("", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Get(testItemPrefix(t) + "never-set")
	if !errors.Is(err, platform.ErrSecretNotFound) {
		t.Fatalf("Get(missing) err = %v, want platform.ErrSecretNotFound", err)
	}
	var ue *platform.SecretStoreUnavailableError
	if errors.As(err, &ue) {
		t.Fatalf("missing item reported as unavailable: %v", err)
	}
}

func TestSecretServiceNoBus(t *testing.T) {
	// Needs no bus at all, so it runs everywhere; it must never skip.
	tests := []struct {
		name string
		addr string // "" means unset
	}{
		{"dead socket", "unix:path=" + filepath.Join(t.TempDir(), "no-bus-here")},
		{"unset", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.addr == "" {
				if _, err := os.Stat(fmt.Sprintf("/run/user/%d/bus", os.Getuid())); err == nil {
					t.Skip("/run/user/<uid>/bus exists, so godbus finds a bus without DBUS_SESSION_BUS_ADDRESS")
				}
				t.Setenv("DBUS_SESSION_BUS_ADDRESS", "")
				os.Unsetenv("DBUS_SESSION_BUS_ADDRESS")
			} else {
				t.Setenv("DBUS_SESSION_BUS_ADDRESS", tc.addr)
			}
			s, err := platform.OpenSecretStore("os", t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			secret := []byte("must-not-leak-" + tc.name)
			for name, op := range map[string]func() error{
				"Get":   func() error { _, err := s.Get(platform.DataKeyItem); return err },
				"Set":   func() error { return s.Set(platform.DataKeyItem, secret) },
				"Probe": func() error { return platform.ProbeSecretStore(s) },
			} {
				err := op()
				var ue *platform.SecretStoreUnavailableError
				if !errors.As(err, &ue) {
					t.Fatalf("%s: err = %v, want *platform.SecretStoreUnavailableError", name, err)
				}
				if ue.Backend != "Secret Service" || !strings.Contains(ue.Reason, "D-Bus session bus") {
					t.Errorf("%s: Backend=%q Reason=%q", name, ue.Backend, ue.Reason)
				}
				for _, want := range []string{"DBUS_SESSION_BUS_ADDRESS", "gnome-keyring-daemon", `secret_store = "file"`} {
					if !strings.Contains(ue.Remedy, want) {
						t.Errorf("%s: Remedy %q does not mention %q", name, ue.Remedy, want)
					}
				}
				if strings.Contains(err.Error(), string(secret)) {
					t.Errorf("%s: error text contains the secret", name)
				}
			}
		})
	}
}

// TestSecretServiceLocked locks the keyring, so it runs in a child process
// under its own private bus and gnome-keyring: locking the shared one would
// break other packages' tests running at the same time.
func TestSecretServiceLocked(t *testing.T) {
	if os.Getenv("AGENTIDD_LOCKED_CHILD") == "1" {
		lockedChild(t)
		return
	}
	requireSecretService(t)
	script, err := filepath.Abs("../../scripts/with-secret-service")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, script, os.Args[0], "-test.run=^TestSecretServiceLocked$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "AGENTIDD_LOCKED_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child under %s: %v\n%s", script, err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestSecretServiceLocked") {
		t.Fatalf("child did not run the locked test:\n%s", out)
	}
}

func lockedChild(t *testing.T) {
	if os.Getenv("DBUS_SESSION_BUS_ADDRESS") == "" {
		t.Fatal("child started without a session bus")
	}
	s, err := platform.OpenSecretStore("os", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	item := testItemPrefix(t) + "locked"
	if err := s.Set(item, []byte("before-lock")); err != nil {
		t.Fatalf("Set before lock: %v", err)
	}

	conn, err := dbus.ConnectSessionBus()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var locked []dbus.ObjectPath
	var prompt dbus.ObjectPath
	err = conn.Object("org.freedesktop.secrets", "/org/freedesktop/secrets").
		Call("org.freedesktop.Secret.Service.Lock", 0, []dbus.ObjectPath{"/org/freedesktop/secrets/collection/login"}).
		Store(&locked, &prompt)
	if err != nil || len(locked) != 1 {
		t.Fatalf("Lock: locked=%v prompt=%v err=%v", locked, prompt, err)
	}

	tests := []struct {
		name string
		op   func() error
	}{
		{"Get", func() error { _, err := s.Get(item); return err }},
		{"Set", func() error { return s.Set(item, []byte("after-lock")) }},
		{"Delete", func() error { return s.Delete(item) }},
		{"Probe", func() error { return platform.ProbeSecretStore(s) }},
	}
	for _, tc := range tests {
		start := time.Now()
		err := tc.op()
		var ue *platform.SecretStoreUnavailableError
		if !errors.As(err, &ue) {
			t.Fatalf("%s on a locked keyring: err = %v, want *platform.SecretStoreUnavailableError", tc.name, err)
		}
		if !strings.Contains(ue.Reason, "locked") || !strings.Contains(ue.Remedy, "unlock") || !strings.Contains(ue.Remedy, `secret_store = "file"`) {
			t.Errorf("%s: Reason=%q Remedy=%q", tc.name, ue.Reason, ue.Remedy)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s took %v: a locked keyring must be reported, not waited on", tc.name, d)
		}
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		notFound   bool
		wantReason string // "" means not an unavailable error
	}{
		{"nil", nil, false, ""},
		{"not found", keyring.ErrNotFound, true, ""},
		{"no service", dbus.Error{Name: "org.freedesktop.DBus.Error.ServiceUnknown"}, false, "nothing provides"},
		{"no owner", &dbus.Error{Name: "org.freedesktop.DBus.Error.NameHasNoOwner"}, false, "nothing provides"},
		{"locked", dbus.Error{Name: "org.freedesktop.Secret.Error.IsLocked"}, false, "locked"},
		{"no reply", dbus.Error{Name: "org.freedesktop.DBus.Error.NoReply"}, false, "did not reply"},
		{"no collection", dbus.Error{Name: "org.freedesktop.Secret.Error.NoSuchObject"}, false, "no default keyring"},
		{"other dbus error", dbus.Error{Name: "org.freedesktop.DBus.Error.AccessDenied"}, false, "refused"},
		{"prompt dismissed", errors.New("failed to unlock correct collection '/org/freedesktop/secrets/aliases/default'"), false, "locked"},
		{"deadline", fmt.Errorf("call: %w", context.DeadlineExceeded), false, "did not answer"},
		{"too big", keyring.ErrSetDataTooBig, false, ""},
		{"anything else", errors.New("boom"), false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := classify(tc.err)
			if tc.err == nil {
				if err != nil {
					t.Fatalf("classify(nil) = %v", err)
				}
				return
			}
			if got := errors.Is(err, platform.ErrSecretNotFound); got != tc.notFound {
				t.Errorf("Is(ErrSecretNotFound) = %v, want %v (%v)", got, tc.notFound, err)
			}
			var ue *platform.SecretStoreUnavailableError
			isUnavailable := errors.As(err, &ue)
			if isUnavailable != (tc.wantReason != "") {
				t.Fatalf("unavailable = %v, want %v (%v)", isUnavailable, tc.wantReason != "", err)
			}
			if isUnavailable && (!strings.Contains(ue.Reason, tc.wantReason) || ue.Remedy == "" || ue.Backend != "Secret Service") {
				t.Errorf("got %+v, want reason containing %q and a remedy", ue, tc.wantReason)
			}
		})
	}
}

func TestProviderName(t *testing.T) {
	tests := map[string]string{
		"gnome-keyring-d": "gnome-keyring",
		"kwalletd6":       "KWallet",
		"ksecretd":        "KWallet",
		"keepassxc":       "KeePassXC",
		"other":           "other",
		"":                "",
	}
	for comm, want := range tests {
		if got := providerName(comm); got != want {
			t.Errorf("providerName(%q) = %q, want %q", comm, got, want)
		}
	}
}

// TestSecretServiceTimeout: an operation that never returns (an unlock
// prompt nobody answers) is reported as unavailable once the timeout passes.
func TestSecretServiceTimeout(t *testing.T) {
	requireSecretService(t)
	s := &SecretService{Service: platform.SecretService, Timeout: 300 * time.Millisecond}
	block := make(chan struct{})
	defer close(block)
	start := time.Now()
	_, err := s.do(func() (string, error) { <-block; return "", nil })
	var ue *platform.SecretStoreUnavailableError
	if !errors.As(err, &ue) || !strings.Contains(ue.Reason, "did not answer") || !strings.Contains(ue.Remedy, "unlock") {
		t.Fatalf("do = %v, want unavailable after the timeout", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v with a 300ms timeout", d)
	}
}
