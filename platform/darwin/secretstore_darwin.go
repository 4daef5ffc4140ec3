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
		return platform.NewKeyringSecretStore(Keychain{Service: platform.SecretService}), nil
	})
}

const backendName = "Keychain"

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
