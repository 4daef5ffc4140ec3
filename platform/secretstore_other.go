//go:build !linux && !darwin && !windows

package platform

import "runtime"

// newOSSecretStore: agentidd knows no OS secret store here; the file backend
// is the only choice and it must be chosen explicitly.
func newOSSecretStore(string) (SecretStore, error) {
	return nil, &SecretStoreUnavailableError{
		Backend: "OS secret store",
		Reason:  "agentidd has no OS secret store support on " + runtime.GOOS,
		Remedy:  `set secret_store = "file" in agentidd's config (see docs/secrets.md)`,
	}
}
