// Package store keeps all of the daemon's persistent state (MSAL caches,
// served tokens, grants, consent, the audit head) in one crash-safe file.
//
// The file is a bbolt database: copy-on-write pages and an fsync on every
// commit, so a crash at any point leaves the last committed transaction
// intact. Every value is sealed with AES-256-GCM under a random 32-byte data
// key that lives only in the OS secret store (platform.DataKeyItem), with the
// bucket and key as additional data so records cannot be swapped. Bucket
// names and keys are stored in the clear: callers must not put secrets in
// them (use ids or hashes).
//
// A file that cannot be read back (data key missing or wrong, truncated,
// flipped bits, not a database) is never overwritten or repaired in place: it
// is moved aside to <path>.corrupt-<UTC time> and reported as *CorruptError.
// A file written by a newer agentidd is refused and left untouched.
package store

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/agentidd/agentidd/internal/fsutil"
	"github.com/agentidd/agentidd/platform"
)

// formatVersion is the on-disk layout this code writes and reads. Bump it
// when the layout changes incompatibly; older agentidd versions then refuse
// the file instead of misreading it.
const formatVersion = 1

// recordVersion is the first byte of every sealed value.
const recordVersion = 1

const (
	metaBucket  = "_agentidd" // names starting with "_" are reserved for the store
	metaFormat  = "format"    // big-endian uint32, plaintext: must be readable without the key
	metaKeyTest = "key-check" // a sealed constant: tells "wrong key" from "damaged record"
	keyCheckVal = "agentidd data key check"
	dataKeyLen  = 32
	nonceLen    = 12
	maxKeyLen   = 4096
)

// lockTimeout bounds waiting for another process's lock on the file.
const lockTimeout = time.Second

var (
	// ErrNotFound is returned when a bucket or key does not exist.
	ErrNotFound = errors.New("not found")
	// ErrUndecryptable is wrapped in *CorruptError when the file cannot be
	// opened or decrypted with the data key from the secret store.
	ErrUndecryptable = errors.New("state cannot be decrypted")
	// ErrNewerFormat is returned when the file was written by a newer agentidd.
	ErrNewerFormat = errors.New("state file format is newer than this agentidd")
	// ErrInUse is returned when another process holds the file open.
	ErrInUse = errors.New("state file is in use by another process")
)

// CorruptError reports a state file that could not be read. Err wraps
// ErrUndecryptable. MovedTo is where the original bytes now are (empty when
// the file could not be moved, or was found damaged while open).
type CorruptError struct {
	Path    string
	MovedTo string
	Err     error
}

func (e *CorruptError) Error() string {
	if e.MovedTo == "" {
		return fmt.Sprintf("state file %s is unreadable: %v", e.Path, e.Err)
	}
	return fmt.Sprintf("state file %s is unreadable: %v; it was moved aside, unchanged, to %s "+
		"(agentidd starts with empty state: sign in again; see docs/secrets.md)", e.Path, e.Err, e.MovedTo)
}

func (e *CorruptError) Unwrap() error { return e.Err }

// Options tune Open. The zero value is ready to use.
type Options struct {
	// Now stamps the name of a moved-aside file; nil means time.Now.
	Now func() time.Time
	// FreshOnCorrupt makes Open start an empty store after moving an
	// unreadable file aside, instead of returning the *CorruptError. What was
	// moved is then reported by Store.MovedAside and logged.
	FreshOnCorrupt bool
	// Logger receives the warning about a moved-aside file; nil means
	// slog.Default().
	Logger *slog.Logger
}

// Store is the open state file. It is safe for concurrent use.
type Store struct {
	db    *bolt.DB
	aead  cipher.AEAD
	path  string
	moved *CorruptError
}

// Open opens or creates the state file at path, taking the data key from
// secrets (creating one on first use). The directory is created 0700 and the
// file 0600.
//
// If the secret store is unreachable, Open fails and leaves the file alone:
// the key may come back. If the key is missing while a state file exists, the
// file is unreadable, not a reason to make a new key and carry on.
func Open(path string, secrets platform.SecretStore, opts Options) (*Store, error) {
	if secrets == nil {
		return nil, errors.New("store: no secret store")
	}
	if path == "" {
		return nil, errors.New("store: empty path")
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := ensurePrivateDir(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}

	exists, err := hasState(path)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}

	key, err := secrets.Get(platform.DataKeyItem)
	switch {
	case errors.Is(err, platform.ErrSecretNotFound):
		key = nil
	case err != nil:
		return nil, fmt.Errorf("store: read the data key from %s: %w", secrets.Describe(), err)
	}

	var moved *CorruptError
	if exists {
		// A key problem is only a verdict on the file once verify holds its
		// lock and has read its header: the file may belong to a running
		// daemon with another secret store, or to a newer agentidd that keeps
		// its key elsewhere, and neither is ours to move.
		var keyProblem error
		switch {
		case key == nil:
			keyProblem = fmt.Errorf("its data key is missing from %s: %w", secrets.Describe(), ErrUndecryptable)
		case len(key) != dataKeyLen:
			keyProblem = fmt.Errorf("the data key in %s has %d bytes, want %d: %w", secrets.Describe(), len(key), dataKeyLen, ErrUndecryptable)
		}
		reason := verify(path, key, keyProblem)
		if reason != nil && !errors.Is(reason, ErrUndecryptable) {
			// Newer format, in use, permission denied: not ours to move.
			return nil, reason
		}
		if reason == nil && keyProblem != nil {
			// The file holds no state yet (a crash before its header): an
			// unusable key protects nothing, so a new one replaces it.
			key = nil
		}
		if reason != nil {
			dst, err := moveAside(path, now().UTC())
			if err != nil {
				return nil, &CorruptError{Path: path, Err: fmt.Errorf("%w (and moving it aside failed: %v)", reason, err)}
			}
			moved = &CorruptError{Path: path, MovedTo: dst, Err: reason}
			if !opts.FreshOnCorrupt {
				return nil, moved
			}
			log.Warn("state file unreadable; moved aside and starting fresh",
				"path", path, "moved_to", dst, "reason", reason.Error())
			if len(key) != dataKeyLen {
				key = nil
			}
		}
	}
	if key == nil {
		key = make([]byte, dataKeyLen)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("store: generate data key: %w", err)
		}
		// The key goes into the secret store before any data is sealed with
		// it: a crash in between leaves an unused key, never orphaned data.
		if err := secrets.Set(platform.DataKeyItem, key); err != nil {
			return nil, fmt.Errorf("store: save the new data key in %s: %w", secrets.Describe(), err)
		}
	}

	aead, err := newAEAD(key)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("store: %s: %w (is another agentidd running?)", path, ErrInUse)
		}
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s := &Store{db: db, aead: aead, path: path, moved: moved}
	if err := s.initMeta(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

// hasState reports whether path holds state worth protecting. A zero-byte
// file is what a crash during bbolt's first initialization leaves: it holds
// nothing, so it is simply initialized again.
func hasState(path string) (bool, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat state file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return false, fmt.Errorf("state file %s is not a regular file", path)
	}
	return fi.Size() > 0, nil
}

// initMeta writes the header on a new file, and is a no-op on a verified one.
// It looks first in a read transaction: a bbolt commit writes a new meta
// page even when nothing changed, and opening must not rewrite the file.
func (s *Store) initMeta() error {
	var present bool
	if err := s.db.View(func(tx *bolt.Tx) error {
		present = tx.Bucket([]byte(metaBucket)) != nil
		return nil
	}); err != nil {
		return fmt.Errorf("store: read header: %w", err)
	}
	if present {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte(metaBucket)) != nil {
			return nil
		}
		if name, _ := tx.Cursor().First(); name != nil {
			return fmt.Errorf("store: %s has data but no agentidd header: %w", s.path, ErrUndecryptable)
		}
		b, err := tx.CreateBucket([]byte(metaBucket))
		if err != nil {
			return fmt.Errorf("store: create header: %w", err)
		}
		if err := b.Put([]byte(metaFormat), binary.BigEndian.AppendUint32(nil, formatVersion)); err != nil {
			return fmt.Errorf("store: write header: %w", err)
		}
		check, err := seal(s.aead, metaBucket, metaKeyTest, []byte(keyCheckVal))
		if err != nil {
			return err
		}
		if err := b.Put([]byte(metaKeyTest), check); err != nil {
			return fmt.Errorf("store: write header: %w", err)
		}
		return nil
	})
}

// verify opens path read-only and reads everything back: bbolt's page
// checks, the format header, the key check and every record. It returns nil,
// an error wrapping ErrUndecryptable, ErrNewerFormat or ErrInUse, or an I/O
// error. Read-only, so a refused file is never written. keyProblem, when not
// nil, says why key cannot be used; it is returned for a file that holds
// state in a format this agentidd reads.
func verify(path string, key []byte, keyProblem error) (err error) {
	undecryptable := func(format string, args ...any) error {
		return fmt.Errorf(format+": %w", append(args, ErrUndecryptable)...)
	}
	// A truncated file makes bbolt touch mmapped pages past EOF (SIGBUS);
	// the size check below catches that first, and this turns any fault we
	// missed into a panic we recover from instead of a dead daemon.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = undecryptable("reading it failed (%v)", r)
		}
	}()

	var aead cipher.AEAD
	if keyProblem == nil {
		if aead, err = newAEAD(key); err != nil {
			return err
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("stat state file: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: lockTimeout})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("store: %s: %w (is another agentidd running?)", path, ErrInUse)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("store: open %s: %w", path, err)
	case err != nil:
		return undecryptable("not a readable state database (%v)", err)
	}
	defer db.Close()

	return db.View(func(tx *bolt.Tx) error {
		if tx.Size() > fi.Size() {
			return undecryptable("file is truncated (%d of %d bytes)", fi.Size(), tx.Size())
		}
		var damaged error
		for cerr := range tx.Check() {
			if damaged == nil { // drain the rest so the checker goroutine ends
				damaged = undecryptable("database pages are damaged (%v)", cerr)
			}
		}
		if damaged != nil {
			return damaged
		}
		meta := tx.Bucket([]byte(metaBucket))
		if meta == nil {
			if name, _ := tx.Cursor().First(); name == nil {
				// bbolt initialized the file but we crashed before the
				// header's commit: nothing to lose, initMeta finishes it.
				return nil
			}
			return undecryptable("no agentidd header")
		}
		v := meta.Get([]byte(metaFormat))
		if len(v) != 4 {
			return undecryptable("damaged format header")
		}
		switch n := binary.BigEndian.Uint32(v); {
		case n > formatVersion:
			return fmt.Errorf("state file %s was written by a newer agentidd (format %d; this one reads format %d); upgrade agentidd or move the file aside: %w",
				path, n, formatVersion, ErrNewerFormat)
		case n < 1:
			return undecryptable("invalid format %d", n)
		}
		if keyProblem != nil {
			return keyProblem
		}
		if pt, err := open(aead, metaBucket, metaKeyTest, meta.Get([]byte(metaKeyTest))); err != nil || string(pt) != keyCheckVal {
			return undecryptable("the data key does not match this file")
		}
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			if string(name) == metaBucket {
				return nil
			}
			return b.ForEach(func(k, v []byte) error {
				if v == nil {
					return undecryptable("unexpected nested bucket %q/%q", name, k)
				}
				if _, err := open(aead, string(name), string(k), v); err != nil {
					return undecryptable("record %q/%q fails authentication", name, k)
				}
				return nil
			})
		})
	})
}

// moveAside renames path to path.corrupt-<UTC time>, adding a counter if
// that name is taken, so no earlier evidence is ever overwritten.
func moveAside(path string, t time.Time) (string, error) {
	return moveAsideAs(path, ".corrupt-", t)
}

func moveAsideAs(path, tag string, t time.Time) (string, error) {
	base := path + tag + t.Format("20060102T150405Z")
	dst := base
	for i := 2; ; i++ {
		if _, err := os.Lstat(dst); errors.Is(err, fs.ErrNotExist) {
			break
		}
		if i > 1000 {
			return "", fmt.Errorf("no free name for %s", base)
		}
		dst = fmt.Sprintf("%s-%d", base, i)
	}
	if err := os.Rename(path, dst); err != nil {
		return "", err
	}
	fsutil.SyncDir(filepath.Dir(path))
	return dst, nil
}

// MovedAside reports the unreadable file that Open moved aside before
// starting fresh (Options.FreshOnCorrupt), or nil.
func (s *Store) MovedAside() *CorruptError { return s.moved }

// Path is the state file's path.
func (s *Store) Path() string { return s.path }

// Close closes the file. Pending transactions finish first.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// Get returns the value under bucket/key, or an error wrapping ErrNotFound.
func (s *Store) Get(bucket, key string) ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		out, err = (&Tx{s: s, tx: tx}).Get(bucket, key)
		return err
	})
	return out, err
}

// Put stores value under bucket/key; it is on disk when Put returns.
func (s *Store) Put(bucket, key string, value []byte) error {
	return s.Update(func(tx *Tx) error { return tx.Put(bucket, key, value) })
}

// Delete removes bucket/key; deleting an absent key is not an error.
func (s *Store) Delete(bucket, key string) error {
	return s.Update(func(tx *Tx) error { return tx.Delete(bucket, key) })
}

// ForEach calls fn for every record in bucket, in key order. The records
// are read and decrypted first and fn runs outside the read transaction, so
// fn may write to the store. An error from fn stops the walk and is returned.
func (s *Store) ForEach(bucket string, fn func(key string, value []byte) error) error {
	if err := checkBucket(bucket); err != nil {
		return err
	}
	type kv struct {
		k string
		v []byte
	}
	var all []kv
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			pt, err := open(s.aead, bucket, string(k), v)
			if err != nil {
				return s.damaged(bucket, string(k))
			}
			all = append(all, kv{string(k), pt})
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, r := range all {
		if err := fn(r.k, r.v); err != nil {
			return err
		}
	}
	return nil
}

// Update runs fn in one read-write transaction: all of its puts and deletes
// reach the disk together when Update returns nil, or none do.
func (s *Store) Update(fn func(tx *Tx) error) error {
	return s.db.Update(func(tx *bolt.Tx) error { return fn(&Tx{s: s, tx: tx}) })
}

// damaged reports a record that fails authentication after Open verified the
// file: the disk changed under us. The file stays where it is (it is open).
func (s *Store) damaged(bucket, key string) error {
	return &CorruptError{Path: s.path, Err: fmt.Errorf("record %q/%q fails authentication: %w", bucket, key, ErrUndecryptable)}
}

// Tx is a transaction inside Store.Update. It must not be used after fn
// returns.
type Tx struct {
	s  *Store
	tx *bolt.Tx
}

// Get returns the value under bucket/key, or an error wrapping ErrNotFound.
// It sees the transaction's own earlier writes.
func (t *Tx) Get(bucket, key string) ([]byte, error) {
	if err := checkBucketKey(bucket, key); err != nil {
		return nil, err
	}
	b := t.tx.Bucket([]byte(bucket))
	if b == nil {
		return nil, fmt.Errorf("store: %s/%s: %w", bucket, key, ErrNotFound)
	}
	v := b.Get([]byte(key))
	if v == nil {
		return nil, fmt.Errorf("store: %s/%s: %w", bucket, key, ErrNotFound)
	}
	pt, err := open(t.s.aead, bucket, key, v)
	if err != nil {
		return nil, t.s.damaged(bucket, key)
	}
	return pt, nil
}

// Put stores value under bucket/key, creating the bucket if needed.
func (t *Tx) Put(bucket, key string, value []byte) error {
	if err := checkBucketKey(bucket, key); err != nil {
		return err
	}
	sealed, err := seal(t.s.aead, bucket, key, value)
	if err != nil {
		return err
	}
	b, err := t.tx.CreateBucketIfNotExists([]byte(bucket))
	if err != nil {
		return fmt.Errorf("store: bucket %q: %w", bucket, err)
	}
	if err := b.Put([]byte(key), sealed); err != nil {
		return fmt.Errorf("store: put %s/%s: %w", bucket, key, err)
	}
	return nil
}

// Delete removes bucket/key; an absent key or bucket is not an error.
func (t *Tx) Delete(bucket, key string) error {
	if err := checkBucketKey(bucket, key); err != nil {
		return err
	}
	b := t.tx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	if err := b.Delete([]byte(key)); err != nil {
		return fmt.Errorf("store: delete %s/%s: %w", bucket, key, err)
	}
	return nil
}

func checkBucket(bucket string) error {
	if bucket == "" {
		return errors.New("store: empty bucket name")
	}
	if strings.HasPrefix(bucket, "_") {
		return fmt.Errorf("store: bucket name %q is reserved", bucket)
	}
	if len(bucket) > maxKeyLen {
		return fmt.Errorf("store: bucket name longer than %d bytes", maxKeyLen)
	}
	return nil
}

func checkBucketKey(bucket, key string) error {
	if err := checkBucket(bucket); err != nil {
		return err
	}
	if key == "" {
		return errors.New("store: empty key")
	}
	if len(key) > maxKeyLen {
		return fmt.Errorf("store: key longer than %d bytes", maxKeyLen)
	}
	return nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != dataKeyLen {
		return nil, fmt.Errorf("data key has %d bytes, want %d", len(key), dataKeyLen)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("data key: %w", err)
	}
	return cipher.NewGCM(block)
}

// additionalData binds a sealed value to its place: the record version, the
// bucket and the key, each length-prefixed so no two places share bytes.
func additionalData(bucket, key string) []byte {
	ad := make([]byte, 0, 1+8+len(bucket)+len(key))
	ad = append(ad, recordVersion)
	ad = binary.BigEndian.AppendUint32(ad, uint32(len(bucket)))
	ad = append(ad, bucket...)
	ad = binary.BigEndian.AppendUint32(ad, uint32(len(key)))
	ad = append(ad, key...)
	return ad
}

// seal lays out a record as version(1) | nonce(12) | ciphertext+tag. Random
// nonces are safe here: a daemon's lifetime of writes stays far below the
// 2^32 messages per key that GCM allows with random nonces.
func seal(aead cipher.AEAD, bucket, key string, plain []byte) ([]byte, error) {
	out := make([]byte, 1+nonceLen, 1+nonceLen+len(plain)+aead.Overhead())
	out[0] = recordVersion
	if _, err := rand.Read(out[1 : 1+nonceLen]); err != nil {
		return nil, fmt.Errorf("store: nonce: %w", err)
	}
	return aead.Seal(out, out[1:1+nonceLen], plain, additionalData(bucket, key)), nil
}

func open(aead cipher.AEAD, bucket, key string, rec []byte) ([]byte, error) {
	if len(rec) < 1+nonceLen+aead.Overhead() || rec[0] != recordVersion {
		return nil, ErrUndecryptable
	}
	pt, err := aead.Open(nil, rec[1:1+nonceLen], rec[1+nonceLen:], additionalData(bucket, key))
	if err != nil {
		return nil, ErrUndecryptable
	}
	if pt == nil {
		pt = []byte{}
	}
	return pt, nil
}

// ensurePrivateDir creates dir 0700, and narrows an existing one that group
// or others can enter: the state file's names and sizes are not for them.
func ensurePrivateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("stat directory %s: %w", dir, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("restrict directory %s to 0700: %w", dir, err)
		}
	}
	return nil
}

// Reset is the store's half of `agentidd reset`: it moves the state file
// aside to <path>.reset-<UTC time> (never deleting it) and deletes the data
// key, so the next Open starts empty under a new key. Without the key the
// moved file can no longer be read; that is the point of a reset. It returns
// where the file went ("" if there was none) and refuses with ErrInUse while
// a daemon has the file open.
func Reset(path string, secrets platform.SecretStore, opts Options) (string, error) {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	var movedTo string
	if _, err := os.Lstat(path); err == nil {
		// bbolt takes the same lock a running daemon holds.
		db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: lockTimeout})
		if errors.Is(err, berrors.ErrTimeout) {
			return "", fmt.Errorf("store: %s: %w (stop agentidd first)", path, ErrInUse)
		}
		if err == nil {
			_ = db.Close()
		}
		movedTo, err = moveAsideAs(path, ".reset-", now().UTC())
		if err != nil {
			return "", fmt.Errorf("store: move %s aside: %w", path, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("store: %w", err)
	}
	if err := secrets.Delete(platform.DataKeyItem); err != nil {
		return movedTo, fmt.Errorf("store: delete the data key from %s: %w", secrets.Describe(), err)
	}
	return movedTo, nil
}
