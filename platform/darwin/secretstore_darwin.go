//go:build darwin

package darwin

import (
	"errors"
	"fmt"
	"os/exec"

	keyring "github.com/zalando/go-keyring"

	"github.com/agentidd/agentidd/platform"
)

// The login Keychain through go-keyring, which drives /usr/bin/security.
// Behaviour is compile-checked only on CI (CGO_ENABLED=0 builds for darwin).
func init() {
	platform.RegisterOSSecretStore(func(string) (platform.SecretStore, error) {
		return platform.NewKeyringSecretStore(Keychain{Service: platform.SecretService}, keychainMaxValue), nil
	})
}

const backendName = "Keychain"

// keychainMaxValue is the longest value handed to the Keychain as one item;
// longer ones (a certificate and its key, ~3,900 characters in base64) are
// split by platform.NewKeyringSecretStore.
//
// go-keyring (v0.2.8, keyring_darwin.go) writes an item by sending
//
//	add-generic-password -U -s <service> -a <item> -w go-keyring-base64:<base64 of value>\n
//
// to `security -i` and refuses (ErrSetDataTooBig) when that line is over
// 4096 bytes. Each argument goes through shellescape.Quote, which leaves
// [A-Za-z0-9_@%+=:,./-] alone: agentidd's service, item names and both
// base64 layers pass unquoted. The line is 36 fixed bytes ("add-generic-
// password -U -s ", " -a ", " -w ", "\n") + the service "agentidd" (8) +
// the item + 18 ("go-keyring-base64:") + 4*ceil(len(value)/3). The longest
// item agentidd writes is a part of a rotated blueprint credential,
// "blueprint/<36-char app id>.previous.c<8 hex>.<0-63>" (68 bytes), so a
// value of V bytes needs 130 + 4*ceil(V/3) <= 4096: V <= 2973. Even an item
// of checkItem's maximum 200 bytes, quoted (+2 for a name without a single
// quote), allows V <= 2874. 2048 gives a line of 2862 bytes for agentidd's
// longest item and 2996 for a 200-byte one: a margin of over 1000 bytes.
const keychainMaxValue = 2048

const remedyLocked = "unlock the login keychain (security unlock-keychain login.keychain-db, or log in at the console), then retry; " +
	`or, accepting weaker protection, set secret_store = "file" in agentidd's config (see docs/secrets.md)`

// Keychain stores strings as generic passwords (service, account = item).
type Keychain struct {
	Service string
}

var _ platform.KeyringBackend = Keychain{}

// Describe is "Keychain".
func (Keychain) Describe() string { return backendName }

// KeyringGet returns the value of item, or platform.ErrSecretNotFound.
func (k Keychain) KeyringGet(item string) (string, error) {
	v, err := keyring.Get(k.Service, item)
	return v, classify(err)
}

// KeyringSet stores value under item.
func (k Keychain) KeyringSet(item, value string) error {
	return classify(keyring.Set(k.Service, item, value))
}

// KeyringDelete removes item; platform.ErrSecretNotFound when absent.
func (k Keychain) KeyringDelete(item string) error {
	return classify(keyring.Delete(k.Service, item))
}

// classify maps go-keyring's errors. The security tool reports a locked
// keychain with a non-zero exit status (errSecInteractionNotAllowed when no
// UI can be shown), which go-keyring passes on as *exec.ExitError without
// its output: every such failure is treated as "unavailable".
func classify(err error) error {
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, keyring.ErrNotFound):
		return platform.ErrSecretNotFound
	case errors.Is(err, keyring.ErrSetDataTooBig):
		return fmt.Errorf("secret too big for the Keychain: %w", err)
	case errors.Is(err, exec.ErrNotFound):
		return &platform.SecretStoreUnavailableError{
			Backend: backendName, Reason: "/usr/bin/security is missing", Err: err,
			Remedy: `reinstall the macOS command line tools, or set secret_store = "file" in agentidd's config`,
		}
	case errors.As(err, &exitErr):
		return &platform.SecretStoreUnavailableError{
			Backend: backendName, Reason: "the Keychain refused access (locked, or no UI to ask)", Remedy: remedyLocked, Err: err,
		}
	default:
		return fmt.Errorf("keychain: %w", err)
	}
}
