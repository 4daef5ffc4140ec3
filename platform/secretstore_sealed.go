package platform

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/agentidd/agentidd/internal/fsutil"
)

// Sealer protects bytes so only the current OS user can read them back
// (DPAPI in user scope on Windows). entropy is mixed in by the OS, so a blob
// unsealed with other entropy fails.
type Sealer interface {
	Seal(plain, entropy []byte) ([]byte, error)
	Unseal(sealed, entropy []byte) ([]byte, error)
	Name() string // e.g. "DPAPI"
}

// Sealed file layout, version 1:
//
//	magic "agentidd-sealed\n" | version (1 byte) | item length (1 byte) | item | sealed blob
//
// The item name is stored in the clear so a file copied over another item's
// name is reported as such; it is also bound into the entropy, so the OS
// refuses to unseal it under the wrong name even if the header were edited.
const (
	sealedMagic   = "agentidd-sealed\n"
	sealedVersion = 1
	sealedSuffix  = ".sealed"
)

// ErrSealedNewerFormat is returned (wrapped) for a sealed file written by a
// newer agentidd.
var ErrSealedNewerFormat = errors.New("sealed secret file is from a newer agentidd")

// sealedEntropy derives the entropy for item. Versioned, so a future layout
// can never unseal (and misread) a blob of this one.
func sealedEntropy(item string) []byte {
	h := sha256.New()
	h.Write([]byte("agentidd sealed secret v1\x00"))
	h.Write([]byte(item))
	return h.Sum(nil)
}

func encodeSealed(item string, blob []byte) []byte {
	out := make([]byte, 0, len(sealedMagic)+2+len(item)+len(blob))
	out = append(out, sealedMagic...)
	out = append(out, sealedVersion, byte(len(item)))
	out = append(out, item...)
	return append(out, blob...)
}

func decodeSealed(item string, data []byte) ([]byte, error) {
	rest, ok := bytes.CutPrefix(data, []byte(sealedMagic))
	if !ok || len(rest) < 2 {
		return nil, errors.New("not an agentidd sealed secret file")
	}
	if v := rest[0]; v != sealedVersion {
		if v > sealedVersion {
			return nil, fmt.Errorf("format %d (this agentidd reads %d): %w", v, sealedVersion, ErrSealedNewerFormat)
		}
		return nil, fmt.Errorf("unknown sealed format %d", v)
	}
	n := int(rest[1])
	rest = rest[2:]
	if len(rest) < n {
		return nil, errors.New("sealed secret file is truncated")
	}
	if got := string(rest[:n]); got != item {
		return nil, fmt.Errorf("sealed secret file holds item %q, not %q", got, item)
	}
	if len(rest) == n {
		return nil, errors.New("sealed secret file is truncated")
	}
	return rest[n:], nil
}

// NewSealedSecretStore keeps the listed items as files in dir, each sealed
// with s and written temp+fsync+rename, and passes every other item to
// inner. Windows uses it for the data key: Credential Manager caps a
// credential at 2560 bytes and roams it with the profile, while a
// DPAPI-sealed file stays on the machine next to the state it unlocks.
func NewSealedSecretStore(dir string, s Sealer, inner SecretStore, items ...string) SecretStore {
	return &sealedStore{dir: dir, sealer: s, inner: inner, items: items}
}

type sealedStore struct {
	dir    string
	sealer Sealer
	inner  SecretStore
	items  []string
	mu     sync.Mutex
}

var _ SecretStore = (*sealedStore)(nil)

func (s *sealedStore) Describe() string {
	return s.inner.Describe() + " + " + s.sealer.Name() + "-sealed files in " + s.dir
}

func (s *sealedStore) sealed(item string) bool { return slices.Contains(s.items, item) }

func (s *sealedStore) path(item string) string {
	return filepath.Join(s.dir, itemFileName(item, sealedSuffix))
}

func (s *sealedStore) Get(item string) ([]byte, error) {
	if err := checkItem(item); err != nil {
		return nil, err
	}
	if !s.sealed(item) {
		return s.inner.Get(item)
	}
	p := s.path(item)
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("secret store: item %q: %w", item, ErrSecretNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("secret store: read %s: %w", p, err)
	}
	blob, err := decodeSealed(item, data)
	if err != nil {
		return nil, fmt.Errorf("secret store: %s: %w", p, err)
	}
	plain, err := s.sealer.Unseal(blob, sealedEntropy(item))
	if err != nil {
		// Another user, another machine, or a reset Windows password
		// without the DPAPI master key: the secret is gone for good.
		return nil, fmt.Errorf("secret store: %s cannot unseal %s (sealed by another user or machine?): %w", s.sealer.Name(), p, err)
	}
	return plain, nil
}

func (s *sealedStore) Set(item string, secret []byte) error {
	if err := checkItem(item); err != nil {
		return err
	}
	if !s.sealed(item) {
		return s.inner.Set(item, secret)
	}
	blob, err := s.sealer.Seal(secret, sealedEntropy(item))
	if err != nil {
		return fmt.Errorf("secret store: %s seal %q: %w", s.sealer.Name(), item, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ensurePrivateDir(s.dir); err != nil {
		return fmt.Errorf("secret store: %w", err)
	}
	if err := fsutil.WriteFileAtomic(s.path(item), encodeSealed(item, blob), 0o600); err != nil {
		return fmt.Errorf("secret store: write sealed %q: %w", item, err)
	}
	return nil
}

func (s *sealedStore) Delete(item string) error {
	if err := checkItem(item); err != nil {
		return err
	}
	if !s.sealed(item) {
		return s.inner.Delete(item)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err := os.Remove(s.path(item))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("secret store: delete sealed %q: %w", item, err)
	}
	fsutil.SyncDir(s.dir)
	return nil
}
