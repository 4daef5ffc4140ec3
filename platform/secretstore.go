package platform

import (
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"unicode"
)

// SecretStore holds small secrets (agent credentials, the store's data key)
// in the OS secret store: Secret Service on Linux, the login Keychain on
// macOS, Credential Manager plus DPAPI on Windows, or, only when the user opts
// in, plain 0600 files.
//
// Implementations are safe for concurrent use. Errors never contain secret
// bytes.
type SecretStore interface {
	// Get returns the secret stored under item, or an error wrapping
	// ErrSecretNotFound when there is none.
	Get(item string) ([]byte, error)
	// Set stores secret under item, replacing any previous value.
	Set(item string, secret []byte) error
	// Delete removes item. Deleting an absent item is not an error.
	Delete(item string) error
	// Describe names the backend for status output and logs, e.g.
	// "Secret Service (gnome-keyring)" or "file (0600, no OS protection)".
	Describe() string
}

// ErrSecretNotFound is returned (wrapped) by SecretStore.Get when the item is
// absent.
var ErrSecretNotFound = errors.New("secret not found in the secret store")

// SecretStoreUnavailableError reports that the backend cannot be reached or
// is locked. The daemon can start degraded on it and show Remedy to the user.
type SecretStoreUnavailableError struct {
	Backend string // e.g. "Secret Service"
	Reason  string // what is wrong, in plain words
	Remedy  string // exactly what the user should do next
	Err     error  // the backend's own error, if any
}

func (e *SecretStoreUnavailableError) Error() string {
	var b strings.Builder
	b.WriteString("secret store ")
	b.WriteString(e.Backend)
	b.WriteString(" unavailable: ")
	b.WriteString(e.Reason)
	if e.Err != nil {
		// Backend errors are D-Bus, exec or Win32 errors; none carries the
		// secret, which is only ever passed as call data.
		b.WriteString(" (")
		b.WriteString(e.Err.Error())
		b.WriteString(")")
	}
	if e.Remedy != "" {
		b.WriteString("; to fix: ")
		b.WriteString(e.Remedy)
	}
	return b.String()
}

func (e *SecretStoreUnavailableError) Unwrap() error { return e.Err }

// SecretService is the one service name under which agentidd files all of
// its secrets in the OS store; items are named by purpose.
const SecretService = "agentidd"

// DataKeyItem holds internal/store's 32-byte data key.
const DataKeyItem = "data-key"

// probeItem is read, never written, by ProbeSecretStore.
const probeItem = "probe"

// BlueprintItem names the credential of an Agent ID blueprint application.
func BlueprintItem(appID string) string { return "blueprint/" + appID }

// AgentItem names the credential of an agent identity.
func AgentItem(appID string) string { return "agent/" + appID }

// Secret store kinds accepted by OpenSecretStore (config key secret_store).
const (
	SecretStoreOS   = "os"
	SecretStoreFile = "file"
)

// OpenSecretStore returns the backend selected by config: "" or "os" for the
// OS secret store, "file" for the explicit opt-in file backend, which keeps
// its files in stateDir/secrets. The OS backend is returned even when it is
// currently unreachable; call ProbeSecretStore to find out.
func OpenSecretStore(kind string, stateDir string) (SecretStore, error) {
	switch kind {
	case "", SecretStoreOS:
		return newOSSecretStore(stateDir)
	case SecretStoreFile:
		if stateDir == "" {
			return nil, errors.New("secret store: file backend needs a state directory")
		}
		return NewFileSecretStore(filepath.Join(stateDir, "secrets")), nil
	default:
		return nil, fmt.Errorf("secret store: unknown secret_store %q (want %q or %q)", kind, SecretStoreOS, SecretStoreFile)
	}
}

// The per-OS package (platform/linux, platform/darwin, platform/windows)
// registers its secret store constructor from init: those packages import
// platform for the types, so platform cannot import them.
var (
	secretStoreMu  sync.Mutex
	newSecretStore func(stateDir string) (SecretStore, error)
)

// RegisterOSSecretStore is called by the per-OS platform package in its init.
func RegisterOSSecretStore(fn func(stateDir string) (SecretStore, error)) {
	secretStoreMu.Lock()
	defer secretStoreMu.Unlock()
	newSecretStore = fn
}

// newOSSecretStore returns the registered OS backend. Without one (no OS
// package linked in, or an OS agentidd does not support) the file backend
// is the only choice, and it must be chosen explicitly.
func newOSSecretStore(stateDir string) (SecretStore, error) {
	secretStoreMu.Lock()
	fn := newSecretStore
	secretStoreMu.Unlock()
	if fn == nil {
		return nil, &SecretStoreUnavailableError{
			Backend: "OS secret store",
			Reason:  "no OS secret store support is linked in for " + runtime.GOOS,
			Remedy:  `set secret_store = "file" in agentidd's config (see docs/secrets.md)`,
		}
	}
	return fn(stateDir)
}

// ProbeSecretStore does a harmless read so the daemon can find out at
// startup whether secrets are reachable and start degraded, with the remedy
// in hand, rather than crash. It returns nil when the backend answers, and the
// backend's error (typically *SecretStoreUnavailableError) when not.
func ProbeSecretStore(s SecretStore) error {
	_, err := s.Get(probeItem)
	if err == nil || errors.Is(err, ErrSecretNotFound) {
		return nil
	}
	return err
}

// maxItemLen keeps item names well inside every backend's limits
// (Credential Manager target names, file names).
const maxItemLen = 200

// checkItem rejects names that could escape the file backend's directory or
// confuse a backend. Item names are not secret, so they may appear in errors.
func checkItem(item string) error {
	if item == "" {
		return errors.New("secret store: empty item name")
	}
	if len(item) > maxItemLen {
		return fmt.Errorf("secret store: item name longer than %d bytes", maxItemLen)
	}
	for _, r := range item {
		if r > unicode.MaxASCII || !unicode.IsPrint(r) {
			return fmt.Errorf("secret store: item name %q has a character outside printable ASCII", item)
		}
	}
	if item == "." || item == ".." {
		return fmt.Errorf("secret store: invalid item name %q", item)
	}
	return nil
}

// itemFileName maps an item name to a single path element. PathEscape turns
// "/" into "%2F", so "agent/<id>" cannot name a subdirectory, and the suffix
// keeps "." and ".." away.
func itemFileName(item, suffix string) string {
	return url.PathEscape(item) + suffix
}
