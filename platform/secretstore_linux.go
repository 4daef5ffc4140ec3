//go:build linux

package platform

import (
	"errors"

	"github.com/agentidd/agentidd/platform/linux"
)

// newOSSecretStore returns the Secret Service backend. stateDir is unused:
// everything lives in the keyring.
func newOSSecretStore(string) (SecretStore, error) {
	return keyringStore{kr: &secretServiceKeyring{ss: &linux.SecretService{Service: SecretService}}}, nil
}

type secretServiceKeyring struct{ ss *linux.SecretService }

const secretServiceBackend = "Secret Service"

func (k *secretServiceKeyring) describe() string {
	if p := k.ss.Provider(); p != "" {
		return secretServiceBackend + " (" + p + ")"
	}
	return secretServiceBackend
}

func (k *secretServiceKeyring) get(item string) (string, error) {
	v, err := k.ss.Get(item)
	return v, mapSecretServiceErr(err)
}

func (k *secretServiceKeyring) set(item, value string) error {
	return mapSecretServiceErr(k.ss.Set(item, value))
}

func (k *secretServiceKeyring) del(item string) error {
	return mapSecretServiceErr(k.ss.Delete(item))
}

func mapSecretServiceErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, linux.ErrSecretNotFound) {
		return ErrSecretNotFound
	}
	var ue *linux.SecretServiceUnavailableError
	if errors.As(err, &ue) {
		return &SecretStoreUnavailableError{Backend: secretServiceBackend, Reason: ue.Reason, Remedy: ue.Remedy, Err: ue.Err}
	}
	return err
}
