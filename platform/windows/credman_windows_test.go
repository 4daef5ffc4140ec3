//go:build windows

package windows

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentidd/agentidd/platform"
)

// A real Credential Manager round trip (wine implements CredWrite/CredRead
// for the prefix's user). The service name is per test run so a developer's
// own agentidd credentials are never touched, and items are deleted after.
func TestCredentialManagerRoundTrip(t *testing.T) {
	c := CredentialManager{Service: fmt.Sprintf("agentidd-test-%d", os.Getpid())}
	if got := c.Describe(); got != "Credential Manager" {
		t.Fatalf("Describe = %q", got)
	}
	tests := []struct {
		item, value string
	}{
		{"agent/a1", "v1"},
		{"data-key", strings.Repeat("k", 1000)},
		{"unicode", "clé ünïcode ✓"},
	}
	for _, tt := range tests {
		t.Run(tt.item, func(t *testing.T) {
			t.Cleanup(func() { _ = c.KeyringDelete(tt.item) })
			if err := c.KeyringSet(tt.item, tt.value); err != nil {
				t.Fatalf("KeyringSet: %v", err)
			}
			got, err := c.KeyringGet(tt.item)
			if err != nil || got != tt.value {
				t.Fatalf("KeyringGet = %d bytes, %v; want the %d set", len(got), err, len(tt.value))
			}
			if err := c.KeyringSet(tt.item, tt.value+"2"); err != nil {
				t.Fatalf("KeyringSet (overwrite): %v", err)
			}
			if got, err := c.KeyringGet(tt.item); err != nil || got != tt.value+"2" {
				t.Fatalf("after overwrite KeyringGet = %d bytes, %v", len(got), err)
			}
			if err := c.KeyringDelete(tt.item); err != nil {
				t.Fatalf("KeyringDelete: %v", err)
			}
			if _, err := c.KeyringGet(tt.item); !errors.Is(err, platform.ErrSecretNotFound) {
				t.Fatalf("KeyringGet after delete = %v, want ErrSecretNotFound", err)
			}
			if err := c.KeyringDelete(tt.item); !errors.Is(err, platform.ErrSecretNotFound) {
				t.Fatalf("second KeyringDelete = %v, want ErrSecretNotFound", err)
			}
		})
	}
}

func TestCredentialManagerTooBig(t *testing.T) {
	c := CredentialManager{Service: fmt.Sprintf("agentidd-test-%d", os.Getpid())}
	t.Cleanup(func() { _ = c.KeyringDelete("big") })
	err := c.KeyringSet("big", strings.Repeat("x", 4000))
	if err == nil {
		t.Fatal("KeyringSet of 4000 bytes succeeded, want the size error")
	}
	if !strings.Contains(err.Error(), "too big") || strings.Contains(err.Error(), "xxxx") {
		t.Fatalf("error = %q, want the size message and no value", err)
	}
}

// TestWindowsSecretStoreLayout builds the store the way init registers it
// (DPAPI-sealed data key in a file, other items in Credential Manager)
// with a test-only service name, and checks each item lands where it
// should.
func TestWindowsSecretStoreLayout(t *testing.T) {
	dir := t.TempDir()
	cm := CredentialManager{Service: fmt.Sprintf("agentidd-test-%d", os.Getpid())}
	s := platform.NewSealedSecretStore(dir, DPAPI{}, platform.NewKeyringSecretStore(cm, credManMaxValue), platform.DataKeyItem)
	agent := platform.AgentItem("11111111-2222-3333-4444-555555555555")
	t.Cleanup(func() { _ = s.Delete(agent); _ = s.Delete(platform.DataKeyItem) })

	key := []byte(strings.Repeat("K", 32))
	if err := s.Set(platform.DataKeyItem, key); err != nil {
		t.Fatalf("Set data key: %v", err)
	}
	if err := s.Set(agent, []byte("agent secret")); err != nil {
		t.Fatalf("Set agent: %v", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Fatalf("state dir holds %v, %v; want only the sealed data key", entries, err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, entries[0].Name()))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), string(key)) {
		t.Fatal("sealed file contains the data key in the clear")
	}
	if _, err := cm.KeyringGet(platform.DataKeyItem); !errors.Is(err, platform.ErrSecretNotFound) {
		t.Fatalf("data key found in Credential Manager (%v); it must only be in the sealed file", err)
	}
	if v, err := cm.KeyringGet(agent); err != nil || v == "" {
		t.Fatalf("agent item not in Credential Manager: %v", err)
	}
	for item, want := range map[string]string{platform.DataKeyItem: string(key), agent: "agent secret"} {
		got, err := s.Get(item)
		if err != nil || string(got) != want {
			t.Fatalf("Get(%s) = %d bytes, %v", item, len(got), err)
		}
	}
}
