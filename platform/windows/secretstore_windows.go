//go:build windows

package windows

import (
	"errors"
	"fmt"
	"path/filepath"

	keyring "github.com/zalando/go-keyring"
	"golang.org/x/sys/windows"

	"github.com/agentidd/agentidd/platform"
)

// Agent credentials go to Credential Manager through go-keyring; the data
// key is DPAPI-sealed in a file under the state dir (see
// platform.NewSealedSecretStore for why).
func init() {
	platform.RegisterOSSecretStore(func(stateDir string) (platform.SecretStore, error) {
		if stateDir == "" {
			return nil, errors.New("secret store: the DPAPI-sealed data key needs a state directory")
		}
		inner := platform.NewKeyringSecretStore(CredentialManager{Service: platform.SecretService}, credManMaxValue)
		return platform.NewSealedSecretStore(filepath.Join(stateDir, "keys"), DPAPI{}, inner, platform.DataKeyItem), nil
	})
}

const backendName = "Credential Manager"

// credManMaxValue is the longest value handed to Credential Manager as one
// credential; longer ones (a certificate and its key, ~3,900 characters in
// base64) are split by platform.NewKeyringSecretStore. go-keyring refuses
// a value over 2560 bytes (CRED_MAX_CREDENTIAL_BLOB_SIZE; it stores the
// string's bytes as the blob). 2048 keeps a margin below that check in case
// a go-keyring update adds a prefix (as it does on macOS); an RSA-2048
// certificate with its key needs two parts either way.
const credManMaxValue = 2048

// CredentialManager stores strings as generic credentials named
// "<Service>:<item>". Behaviour is compile-checked only on CI; the mapping
// below follows go-keyring's and wincred's documented errors.
type CredentialManager struct {
	Service string
}

var _ platform.KeyringBackend = CredentialManager{}

// Describe is "Credential Manager".
func (CredentialManager) Describe() string { return backendName }

// KeyringGet returns the value of item, or platform.ErrSecretNotFound.
func (c CredentialManager) KeyringGet(item string) (string, error) {
	v, err := keyring.Get(c.Service, item)
	return v, classify(err)
}

// KeyringSet stores value under item.
func (c CredentialManager) KeyringSet(item, value string) error {
	return classify(keyring.Set(c.Service, item, value))
}

// KeyringDelete removes item; platform.ErrSecretNotFound when absent.
func (c CredentialManager) KeyringDelete(item string) error {
	return classify(keyring.Delete(c.Service, item))
}

func classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, keyring.ErrNotFound), errors.Is(err, windows.ERROR_NOT_FOUND):
		return platform.ErrSecretNotFound
	case errors.Is(err, keyring.ErrSetDataTooBig):
		return fmt.Errorf("secret too big for Credential Manager (2560 bytes at most in one credential): %w", err)
	case errors.Is(err, windows.ERROR_NO_SUCH_LOGON_SESSION):
		// A service account or a session without a loaded profile has no
		// credential vault.
		return &platform.SecretStoreUnavailableError{
			Backend: backendName,
			Reason:  "this logon session has no credential vault",
			Remedy:  `run agentidd as the signed-in user (not as a service account), or set secret_store = "file" in agentidd's config (see docs/secrets.md)`,
			Err:     err,
		}
	default:
		return fmt.Errorf("credential manager: %w", err)
	}
}
