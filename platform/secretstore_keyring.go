package platform

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
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

// Chunked values. A value whose base64 form is longer than the backend's
// maxValue is split over several items ("parts"), and the item itself holds a
// header naming them:
//
//	<item>                 "agentidd-chunks:v1:<gen>:<n>:<length>"
//	<item>.c<gen>.0 … .<n-1>  consecutive slices of the base64 string
//
// gen is 8 random hex digits, new for every write, so the parts of the value
// being written never overwrite those of the value the header still points
// to. length is the length of the joined base64 string, which catches a part
// that was cut short. The header contains '-' and ':', which base64 never
// does, so a header is never mistaken for a plain value and vice versa.
const (
	chunkHeaderPrefix = "agentidd-chunks:"
	chunkVersion      = "v1"
	// maxChunkParts bounds what a header can make Get read: 64 parts of
	// 2048 characters is about 96 KiB of secret, far more than a
	// certificate chain needs.
	maxChunkParts = 64
	chunkGenLen   = 8 // hex digits
	// maxChunkedLen bounds the length a header may claim (what Get
	// allocates for), whatever part size the writer used.
	maxChunkedLen = 1 << 20
	// minMaxValue is the smallest maxValue that leaves room for a header
	// ("agentidd-chunks:v1:01234567:64:131072" is 37 characters).
	minMaxValue = 64
	// getAttempts: a Get that finds a part missing reads the header again
	// and starts over if another process replaced the value meanwhile.
	getAttempts = 3
)

// NewKeyringSecretStore adapts a KeyringBackend to SecretStore: it checks
// item names and carries the bytes as base64, because go-keyring stores
// strings and macOS's security tool mangles anything that is not plain text.
//
// maxValue is the longest string b accepts as one item's value, or 0 for no
// limit. A value whose base64 form fits is stored as that base64 string under
// the item name, as it always has been; a longer one is split into parts of at
// most maxValue characters plus a header (see chunkHeaderPrefix). Writes are
// crash-safe: the parts of the new value are written first, then the header
// that switches to them, then the old value's parts are deleted, so a crash
// leaves either the old value or the new one readable, at worst with the old
// parts orphaned. maxValue must be 0 or at least 64.
func NewKeyringSecretStore(b KeyringBackend, maxValue int) SecretStore {
	if maxValue < 0 || maxValue > 0 && maxValue < minMaxValue {
		panic(fmt.Sprintf("platform: NewKeyringSecretStore: maxValue %d is neither 0 nor at least %d", maxValue, minMaxValue))
	}
	return &keyringStore{kr: b, maxValue: maxValue}
}

type keyringStore struct {
	kr       KeyringBackend
	maxValue int
	// mu serializes Set and Delete within the process, so two writers of
	// one item cannot orphan each other's parts, and keeps Get from reading
	// between a write's header and its cleanup. Another process (the CLI
	// next to the daemon) is not covered: the header switch keeps every
	// value consistent, and Get retries when a value changes under it.
	mu sync.RWMutex
}

var _ SecretStore = (*keyringStore)(nil)

func (s *keyringStore) Describe() string { return s.kr.Describe() }

// chunkHeader describes a chunked value.
type chunkHeader struct {
	gen    string
	n      int
	length int
}

func (h chunkHeader) String() string {
	return chunkHeaderPrefix + chunkVersion + ":" + h.gen + ":" + strconv.Itoa(h.n) + ":" + strconv.Itoa(h.length)
}

func partItem(item, gen string, k int) string {
	return item + ".c" + gen + "." + strconv.Itoa(k)
}

func (h chunkHeader) part(item string, k int) string { return partItem(item, h.gen, k) }

// isChunkHeader reports whether v is a header rather than plain base64.
func isChunkHeader(v string) bool { return strings.HasPrefix(v, chunkHeaderPrefix) }

// parseChunkHeader parses a value for which isChunkHeader is true. Headers
// hold no secret, but errors do not quote them anyway.
func parseChunkHeader(item, v string) (chunkHeader, error) {
	fields := strings.Split(strings.TrimPrefix(v, chunkHeaderPrefix), ":")
	if fields[0] != chunkVersion {
		return chunkHeader{}, fmt.Errorf("secret store: item %q is in a chunk format this agentidd does not read (written by a newer agentidd?)", item)
	}
	damaged := fmt.Errorf("secret store: item %q has a damaged chunk header; delete it and store it again", item)
	if len(fields) != 4 {
		return chunkHeader{}, damaged
	}
	h := chunkHeader{gen: fields[1]}
	if !isGen(h.gen) {
		return chunkHeader{}, damaged
	}
	var err1, err2 error
	h.n, err1 = strconv.Atoi(fields[2])
	h.length, err2 = strconv.Atoi(fields[3])
	if err1 != nil || err2 != nil || h.n < 1 || h.n > maxChunkParts || h.length < h.n || h.length > maxChunkedLen {
		return chunkHeader{}, damaged
	}
	return h, nil
}

func isGen(s string) bool {
	if len(s) != chunkGenLen {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func newGen() (string, error) {
	b := make([]byte, chunkGenLen/2)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("secret store: random chunk generation: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func (s *keyringStore) Get(item string) ([]byte, error) {
	if err := checkItem(item); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for attempt := 1; ; attempt++ {
		v, err := s.kr.KeyringGet(item)
		if err != nil {
			return nil, fmt.Errorf("secret store: get %q: %w", item, err)
		}
		if isChunkHeader(v) {
			header := v
			h, err := parseChunkHeader(item, header)
			if err != nil {
				return nil, err
			}
			var missing int
			v, missing, err = s.getParts(item, h)
			if err != nil {
				return nil, err
			}
			if missing >= 0 {
				// Replaced by another process between reading the
				// header and the parts? Then start over.
				if now, err := s.kr.KeyringGet(item); err == nil && now != header && attempt < getAttempts {
					continue
				}
				// Not ErrSecretNotFound: the item exists, it is broken,
				// and callers must not take it for absent (and, say,
				// create a new data key).
				return nil, fmt.Errorf("secret store: item %q is incomplete (part %d of %d is missing); store it again", item, missing+1, h.n)
			}
		}
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			// Not ours (someone else wrote the item): say so without echoing it.
			return nil, fmt.Errorf("secret store: item %q is not in agentidd's encoding; delete it and store it again", item)
		}
		return b, nil
	}
}

// getParts reads and joins the parts h names. missing is the index of the
// first absent part, or -1 when all were there; nothing is returned from an
// incomplete set.
func (s *keyringStore) getParts(item string, h chunkHeader) (joined string, missing int, err error) {
	var sb strings.Builder
	sb.Grow(h.length)
	for k := range h.n {
		p, err := s.kr.KeyringGet(h.part(item, k))
		if errors.Is(err, ErrSecretNotFound) {
			return "", k, nil
		}
		if err != nil {
			return "", -1, fmt.Errorf("secret store: get %q (part %d of %d): %w", item, k+1, h.n, err)
		}
		if p == "" || sb.Len()+len(p) > h.length {
			return "", -1, fmt.Errorf("secret store: item %q has a damaged part %d of %d; delete it and store it again", item, k+1, h.n)
		}
		sb.WriteString(p)
	}
	if sb.Len() != h.length {
		return "", -1, fmt.Errorf("secret store: item %q is shorter than its chunk header says; delete it and store it again", item)
	}
	return sb.String(), -1, nil
}

func (s *keyringStore) Set(item string, secret []byte) error {
	if err := checkItem(item); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()

	// The old value's parts, to delete once the new value is in place.
	// If the old value cannot be read, the write goes ahead: the new value
	// matters more than the old parts, which at worst stay orphaned.
	var old *chunkHeader
	if v, err := s.kr.KeyringGet(item); err == nil && isChunkHeader(v) {
		if h, err := parseChunkHeader(item, v); err == nil {
			old = &h
		}
	}

	enc := base64.StdEncoding.EncodeToString(secret)
	if s.maxValue == 0 || len(enc) <= s.maxValue {
		if err := s.kr.KeyringSet(item, enc); err != nil {
			return fmt.Errorf("secret store: set %q: %w", item, err)
		}
		s.deleteParts(item, old)
		return nil
	}

	n := (len(enc) + s.maxValue - 1) / s.maxValue
	if n > maxChunkParts {
		return fmt.Errorf("secret store: set %q: %d bytes is more than %s can hold (%d parts of %d base64 characters at most)",
			item, len(secret), s.kr.Describe(), maxChunkParts, s.maxValue)
	}
	gen, err := newGen()
	if err != nil {
		return err
	}
	for old != nil && gen == old.gen {
		if gen, err = newGen(); err != nil {
			return err
		}
	}
	h := chunkHeader{gen: gen, n: n, length: len(enc)}
	if err := checkItem(h.part(item, n-1)); err != nil {
		return fmt.Errorf("secret store: set %q: the value needs %d parts, and the item name is too long to name them: %w", item, n, err)
	}
	for k := range n {
		part := enc[k*s.maxValue : min((k+1)*s.maxValue, len(enc))]
		if err := s.kr.KeyringSet(h.part(item, k), part); err != nil {
			// Nothing points at this generation yet: drop what was
			// written, the old value is untouched.
			s.deleteParts(item, &chunkHeader{gen: gen, n: k})
			return fmt.Errorf("secret store: set %q (part %d of %d): %w", item, k+1, n, err)
		}
	}
	if err := s.kr.KeyringSet(item, h.String()); err != nil {
		// The header may have been written even so (a timeout after the
		// fact). Only when it is known not to be there are the new parts
		// unreferenced and safe to delete.
		if now, gerr := s.kr.KeyringGet(item); gerr == nil && now == h.String() {
			s.deleteParts(item, old)
			return nil
		} else if gerr == nil || errors.Is(gerr, ErrSecretNotFound) {
			s.deleteParts(item, &h)
		}
		return fmt.Errorf("secret store: set %q: %w", item, err)
	}
	s.deleteParts(item, old)
	return nil
}

// deleteParts removes the parts h names, best effort: it runs only when no
// header points at them, so a part left behind is an orphan, not damage.
func (s *keyringStore) deleteParts(item string, h *chunkHeader) {
	if h == nil {
		return
	}
	for k := range h.n {
		_ = s.kr.KeyringDelete(h.part(item, k))
	}
}

func (s *keyringStore) Delete(item string) error {
	if err := checkItem(item); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()

	v, err := s.kr.KeyringGet(item)
	if errors.Is(err, ErrSecretNotFound) {
		return nil
	}
	// A value that cannot be read is still deleted below, as before
	// chunking; only the parts of a readable header are known.
	if err == nil && isChunkHeader(v) {
		if h, err := parseChunkHeader(item, v); err == nil {
			// Parts first, header last: while a part delete fails the
			// header still names every part, so Delete can be retried.
			for k := range h.n {
				if err := s.kr.KeyringDelete(h.part(item, k)); err != nil && !errors.Is(err, ErrSecretNotFound) {
					return fmt.Errorf("secret store: delete %q (part %d of %d): %w", item, k+1, h.n, err)
				}
			}
		}
	}
	err = s.kr.KeyringDelete(item)
	if err == nil || errors.Is(err, ErrSecretNotFound) {
		return nil
	}
	return fmt.Errorf("secret store: delete %q: %w", item, err)
}
