package platform

import (
	"encoding/base64"
	"errors"
	"fmt"
)

// stringKeyring is what each OS keyring adapter provides: go-keyring's
// string-valued API under one service name, with errors already mapped to
// ErrSecretNotFound and *SecretStoreUnavailableError.
type stringKeyring interface {
	get(item string) (string, error)
	set(item, value string) error
	del(item string) error // ErrSecretNotFound when absent
	describe() string
}

// keyringStore adapts a stringKeyring to SecretStore. go-keyring stores
// strings (macOS even mangles non-UTF-8), so secrets travel as base64.
type keyringStore struct {
	kr stringKeyring
}

var _ SecretStore = keyringStore{}

func (s keyringStore) Describe() string { return s.kr.describe() }

func (s keyringStore) Get(item string) ([]byte, error) {
	if err := checkItem(item); err != nil {
		return nil, err
	}
	v, err := s.kr.get(item)
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
	if err := s.kr.set(item, base64.StdEncoding.EncodeToString(secret)); err != nil {
		return fmt.Errorf("secret store: set %q: %w", item, err)
	}
	return nil
}

func (s keyringStore) Delete(item string) error {
	if err := checkItem(item); err != nil {
		return err
	}
	err := s.kr.del(item)
	if err == nil || errors.Is(err, ErrSecretNotFound) {
		return nil
	}
	return fmt.Errorf("secret store: delete %q: %w", item, err)
}
