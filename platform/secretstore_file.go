package platform

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/agentidd/agentidd/internal/fsutil"
)

// fileSecretStore is the explicit opt-in backend (secret_store = "file"):
// each item is one 0600 file in a 0700 directory. It protects against other
// local users and nothing else; see docs/secrets.md.
type fileSecretStore struct {
	dir string
	mu  sync.Mutex // serializes writers so Set/Delete of one item don't interleave
}

var _ SecretStore = (*fileSecretStore)(nil)

const fileSecretSuffix = ".secret"

// NewFileSecretStore returns the file backend rooted at dir. The directory
// is created (0700) on the first Set.
func NewFileSecretStore(dir string) SecretStore {
	return &fileSecretStore{dir: dir}
}

func (s *fileSecretStore) Describe() string {
	return "file (0600, no OS protection) in " + s.dir
}

func (s *fileSecretStore) path(item string) string {
	return filepath.Join(s.dir, itemFileName(item, fileSecretSuffix))
}

func (s *fileSecretStore) Get(item string) ([]byte, error) {
	if err := checkItem(item); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(s.path(item))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("secret store file: item %q: %w", item, ErrSecretNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("secret store file: read item %q: %w", item, err)
	}
	return b, nil
}

func (s *fileSecretStore) Set(item string, secret []byte) error {
	if err := checkItem(item); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ensurePrivateDir(s.dir); err != nil {
		return fmt.Errorf("secret store file: %w", err)
	}
	if err := fsutil.WriteFileAtomic(s.path(item), secret, 0o600); err != nil {
		return fmt.Errorf("secret store file: write item %q: %w", item, err)
	}
	return nil
}

func (s *fileSecretStore) Delete(item string) error {
	if err := checkItem(item); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err := os.Remove(s.path(item))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("secret store file: delete item %q: %w", item, err)
	}
	fsutil.SyncDir(s.dir)
	return nil
}

// ensurePrivateDir creates dir as 0700, and narrows an existing one that is
// open to group or others: the directory is the file backend's only guard.
func ensurePrivateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("stat directory %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("restrict directory %s to 0700: %w", dir, err)
		}
	}
	return nil
}
