package platform

import (
	"encoding/base64"
	"errors"
	"fmt"
)

// KeyringBackend is what an OS package provides for a string-valued keyring
// (go-keyring over Secret Service, Keychain or Credential Manager), with its
// errors already mapped to ErrSecretNotFound and *SecretStoreUnavailableError.
type KeyringBackend interface {
	KeyringGet(item string) (string, error)
	KeyringSet(item, value string) error
	// KeyringDelete returns ErrSecretNotFound when the item is absent.
	KeyringDelete(item string) error
	Describe() string
}

// NewKeyringSecretStore adapts a KeyringBackend to SecretStore: it checks
// item names and carries the bytes as base64, because go-keyring stores
// strings and macOS's security tool mangles anything that is not plain text.
func NewKeyringSecretStore(b KeyringBackend) SecretStore {
	return keyringStore{kr: b}
}

type keyringStore struct {
	kr KeyringBackend
}

var _ SecretStore = keyringStore{}

func (s keyringStore) Describe() string { return s.kr.Describe() }

func (s keyringStore) Get(item string) ([]byte, error) {
	if err := checkItem(item); err != nil {
		return nil, err
	}
	v, err := s.kr.KeyringGet(item)
	if err != nil {
		return nil, fmt.Errorf("secret store: get %q: %w", item, err)
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		// Not ours (someone else wrote the item): say so without echoing it.
		return nil, fmt.Errorf("secret store: item %q is not in agentidd's encoding; delete it and store it again", item)
	}
	return b, nil
}

func (s keyringStore) Set(item string, secret []byte) error {
	if err := checkItem(item); err != nil {
		return err
	}
	if err := s.kr.KeyringSet(item, base64.StdEncoding.EncodeToString(secret)); err != nil {
		return fmt.Errorf("secret store: set %q: %w", item, err)
	}
	return nil
}

func (s keyringStore) Delete(item string) error {
	if err := checkItem(item); err != nil {
		return err
	}
	err := s.kr.KeyringDelete(item)
	if err == nil || errors.Is(err, ErrSecretNotFound) {
		return nil
	}
	return fmt.Errorf("secret store: delete %q: %w", item, err)
}
