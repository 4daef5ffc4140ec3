package store

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentidd/agentidd/platform"
)

// newEnv returns a state path and a file-backed secret store in fresh
// temp dirs.
func newEnv(t *testing.T) (string, platform.SecretStore) {
	t.Helper()
	dir := t.TempDir()
	return filepath.Join(dir, "state", "state.db"), platform.NewFileSecretStore(filepath.Join(dir, "secrets"))
}

func mustOpen(t *testing.T, path string, secrets platform.SecretStore, opts Options) *Store {
	t.Helper()
	s, err := Open(path, secrets, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func randBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	path, secrets := newEnv(t)
	s := mustOpen(t, path, secrets, Options{})
	defer s.Close()

	tests := []struct {
		name          string
		bucket, key   string
		first, second []byte
	}{
		{"msal blob", "msal", "client-1", []byte(`{"RefreshToken":{}}`), []byte(`{"AccessToken":{}}`)},
		{"empty value", "tokens", "k", []byte{}, []byte("now set")},
		{"binary", "grants", "g/1", randBytes(t, 257), randBytes(t, 3)},
		{"large", "consent", "big", bytes.Repeat([]byte("z"), 1<<20), []byte("small")},
		{"unicode key", "audit", "héad\x00with nul", []byte("head"), []byte("head2")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, want := range [][]byte{tc.first, tc.second} {
				if err := s.Put(tc.bucket, tc.key, want); err != nil {
					t.Fatalf("Put: %v", err)
				}
				got, err := s.Get(tc.bucket, tc.key)
				if err != nil {
					t.Fatalf("Get: %v", err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("Get returned %d bytes, want %d", len(got), len(want))
				}
			}
			if err := s.Delete(tc.bucket, tc.key); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if _, err := s.Get(tc.bucket, tc.key); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get after Delete: %v, want ErrNotFound", err)
			}
			if err := s.Delete(tc.bucket, tc.key); err != nil {
				t.Fatalf("Delete of absent key: %v", err)
			}
		})
	}
	if _, err := s.Get("no-such-bucket", "k"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get from absent bucket: %v, want ErrNotFound", err)
	}
	if err := s.Delete("no-such-bucket", "k"); err != nil {
		t.Errorf("Delete from absent bucket: %v", err)
	}
}

func TestInvalidNames(t *testing.T) {
	path, secrets := newEnv(t)
	s := mustOpen(t, path, secrets, Options{})
	defer s.Close()
	tests := []struct{ name, bucket, key string }{
		{"empty bucket", "", "k"},
		{"reserved bucket", "_agentidd", "format"},
		{"reserved prefix", "_x", "k"},
		{"empty key", "tokens", ""},
		{"huge key", "tokens", strings.Repeat("k", maxKeyLen+1)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.Put(tc.bucket, tc.key, []byte("v")); err == nil {
				t.Error("Put accepted it")
			}
			if _, err := s.Get(tc.bucket, tc.key); err == nil || errors.Is(err, ErrNotFound) {
				t.Errorf("Get: %v, want a validation error", err)
			}
			if err := s.Delete(tc.bucket, tc.key); err == nil {
				t.Error("Delete accepted it")
			}
		})
	}
	if err := s.ForEach("_agentidd", func(string, []byte) error { return nil }); err == nil {
		t.Error("ForEach over the reserved header bucket was allowed")
	}
}

func TestPersistsAcrossReopen(t *testing.T) {
	path, secrets := newEnv(t)
	s := mustOpen(t, path, secrets, Options{})
	want := map[string][]byte{"a": []byte("1"), "b": []byte("2"), "c": randBytes(t, 64)}
	for k, v := range want {
		if err := s.Put("grants", k, v); err != nil {
			t.Fatal(err)
		}
	}
	key1, err := secrets.Get(platform.DataKeyItem)
	if err != nil || len(key1) != 32 {
		t.Fatalf("data key after first open: %d bytes, err %v", len(key1), err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = mustOpen(t, path, secrets, Options{})
	defer s.Close()
	got := map[string][]byte{}
	if err := s.ForEach("grants", func(k string, v []byte) error { got[k] = v; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("after reopen: %d records, want %d", len(got), len(want))
	}
	for k, v := range want {
		if !bytes.Equal(got[k], v) {
			t.Errorf("record %q changed across reopen", k)
		}
	}
	key2, _ := secrets.Get(platform.DataKeyItem)
	if !bytes.Equal(key1, key2) {
		t.Error("reopening replaced the data key")
	}
	if s.MovedAside() != nil {
		t.Errorf("MovedAside = %v on a healthy file", s.MovedAside())
	}
}

func TestUpdateIsAtomic(t *testing.T) {
	path, secrets := newEnv(t)
	s := mustOpen(t, path, secrets, Options{})
	defer s.Close()
	if err := s.Put("grants", "old", []byte("old")); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := s.Update(func(tx *Tx) error {
		if err := tx.Put("grants", "new", []byte("new")); err != nil {
			return err
		}
		if err := tx.Delete("grants", "old"); err != nil {
			return err
		}
		if v, err := tx.Get("grants", "new"); err != nil || string(v) != "new" {
			t.Errorf("Tx.Get does not see its own write: %q, %v", v, err)
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update: %v, want boom", err)
	}
	if _, err := s.Get("grants", "new"); !errors.Is(err, ErrNotFound) {
		t.Errorf("put of a failed Update is visible: %v", err)
	}
	if v, err := s.Get("grants", "old"); err != nil || string(v) != "old" {
		t.Errorf("delete of a failed Update took effect: %q, %v", v, err)
	}

	err = s.Update(func(tx *Tx) error {
		if err := tx.Put("grants", "new", []byte("new")); err != nil {
			return err
		}
		return tx.Delete("grants", "old")
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("grants", "old"); !errors.Is(err, ErrNotFound) {
		t.Errorf("old still there after committed delete: %v", err)
	}
}

func TestForEach(t *testing.T) {
	path, secrets := newEnv(t)
	s := mustOpen(t, path, secrets, Options{})
	defer s.Close()
	for _, k := range []string{"c", "a", "b"} {
		if err := s.Put("tokens", k, []byte("v-"+k)); err != nil {
			t.Fatal(err)
		}
	}
	var keys []string
	err := s.ForEach("tokens", func(k string, v []byte) error {
		if string(v) != "v-"+k {
			t.Errorf("value of %q = %q", k, v)
		}
		keys = append(keys, k)
		// Writing from inside the callback must not deadlock.
		return s.Put("consent", k, v)
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(keys, ",") != "a,b,c" {
		t.Errorf("ForEach order = %v, want a,b,c", keys)
	}
	stop := errors.New("stop")
	n := 0
	err = s.ForEach("tokens", func(string, []byte) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Errorf("ForEach after error: err=%v calls=%d, want stop after 1", err, n)
	}
	if err := s.ForEach("empty", func(string, []byte) error { t.Error("called for absent bucket"); return nil }); err != nil {
		t.Error(err)
	}
}

func TestFileModes(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("POSIX modes")
	}
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "state.db")
	s := mustOpen(t, path, platform.NewFileSecretStore(t.TempDir()), Options{})
	defer s.Close()
	for p, want := range map[string]os.FileMode{dir: 0o700, path: 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
}

// TestDiskScan writes known secrets and checks that neither they nor the
// data key appear anywhere in the raw file.
func TestDiskScan(t *testing.T) {
	path, secrets := newEnv(t)
	s := mustOpen(t, path, secrets, Options{})
	values := map[string][]byte{
		"msal":    []byte("refresh-token-0.AVYA-SECRET-MARKER-one-1234567890"),
		"tokens":  []byte("eyJhbGciOiJSUzI1NiJ9.SECRET-MARKER-two.sig"),
		"grants":  []byte("SECRET-MARKER-three"),
		"consent": bytes.Repeat([]byte("SECRET-MARKER-four "), 200),
	}
	for b, v := range values {
		if err := s.Put(b, "k", v); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	key, err := secrets.Get(platform.DataKeyItem)
	if err != nil {
		t.Fatal(err)
	}
	needles := [][]byte{[]byte("SECRET-MARKER"), key, []byte(keyCheckVal)}
	for _, v := range values {
		needles = append(needles, v)
	}
	for _, n := range needles {
		if bytes.Contains(raw, n) {
			t.Errorf("state file contains %d plaintext bytes it should not (%.12q…)", len(n), n)
		}
	}
}

// corruption damages a closed, populated state file (or its key).
type corruption struct {
	name   string
	damage func(t *testing.T, path string, secrets platform.SecretStore)
	reason string // in the error text
}

var corruptions = []corruption{
	{"wrong data key", func(t *testing.T, _ string, secrets platform.SecretStore) {
		if err := secrets.Set(platform.DataKeyItem, randBytes(t, 32)); err != nil {
			t.Fatal(err)
		}
	}, "data key does not match"},
	{"data key missing", func(t *testing.T, _ string, secrets platform.SecretStore) {
		if err := secrets.Delete(platform.DataKeyItem); err != nil {
			t.Fatal(err)
		}
	}, "data key is missing"},
	{"data key wrong length", func(t *testing.T, _ string, secrets platform.SecretStore) {
		if err := secrets.Set(platform.DataKeyItem, randBytes(t, 16)); err != nil {
			t.Fatal(err)
		}
	}, "has 16 bytes"},
	{"truncated to half", func(t *testing.T, path string, _ platform.SecretStore) {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, fi.Size()/2); err != nil {
			t.Fatal(err)
		}
	}, "truncated"},
	{"truncated to 100 bytes", func(t *testing.T, path string, _ platform.SecretStore) {
		if err := os.Truncate(path, 100); err != nil {
			t.Fatal(err)
		}
	}, "not a readable state database"},
	{"bit flip in a record", func(t *testing.T, path string, _ platform.SecretStore) {
		flipInRecord(t, path, "tokens", "k-7", 20)
	}, "fails authentication"},
	{"bit flip in the record header", func(t *testing.T, path string, _ platform.SecretStore) {
		flipInRecord(t, path, "tokens", "k-3", 0)
	}, "fails authentication"},
	{"records swapped", func(t *testing.T, path string, _ platform.SecretStore) {
		rawEdit(t, path, func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte("tokens"))
			a, c := bytes.Clone(b.Get([]byte("k-1"))), bytes.Clone(b.Get([]byte("k-2")))
			if err := b.Put([]byte("k-1"), c); err != nil {
				return err
			}
			return b.Put([]byte("k-2"), a)
		})
	}, "fails authentication"},
	{"record moved to another bucket", func(t *testing.T, path string, _ platform.SecretStore) {
		rawEdit(t, path, func(tx *bolt.Tx) error {
			v := bytes.Clone(tx.Bucket([]byte("tokens")).Get([]byte("k-1")))
			return tx.Bucket([]byte("grants")).Put([]byte("k-1"), v)
		})
	}, "fails authentication"},
	{"both meta pages damaged", func(t *testing.T, path string, _ platform.SecretStore) {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		ps := int64(os.Getpagesize())
		for _, off := range []int64{16 + 8, ps + 16 + 8} { // inside each meta's fields
			if _, err := f.WriteAt([]byte{0xde, 0xad, 0xbe, 0xef}, off); err != nil {
				t.Fatal(err)
			}
		}
	}, "not a readable state database"},
	{"not a database", func(t *testing.T, path string, _ platform.SecretStore) {
		if err := os.WriteFile(path, randBytes(t, 64<<10), 0o600); err != nil {
			t.Fatal(err)
		}
	}, "not a readable state database"},
	{"header missing", func(t *testing.T, path string, _ platform.SecretStore) {
		rawEdit(t, path, func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte(metaBucket)) })
	}, "no agentidd header"},
	{"header version zero", func(t *testing.T, path string, _ platform.SecretStore) {
		rawEdit(t, path, func(tx *bolt.Tx) error {
			return tx.Bucket([]byte(metaBucket)).Put([]byte(metaFormat), []byte{0, 0, 0, 0})
		})
	}, "invalid format 0"},
}

// rawEdit changes the file behind the store's back, as a disk or another
// program could.
func rawEdit(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// flipInRecord flips one bit at offset off of the sealed value's bytes
// where they sit in the file.
func flipInRecord(t *testing.T, path, bucket, key string, off int) {
	t.Helper()
	var sealed []byte
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	err = db.View(func(tx *bolt.Tx) error {
		sealed = bytes.Clone(tx.Bucket([]byte(bucket)).Get([]byte(key)))
		return nil
	})
	db.Close()
	if err != nil || sealed == nil {
		t.Fatalf("record %s/%s not found: %v", bucket, key, err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Copy-on-write leaves stale copies in freed pages: flip them all, so
	// only the live one matters.
	n := 0
	for i := bytes.Index(raw, sealed); i >= 0; {
		raw[i+off] ^= 0x10
		n++
		j := bytes.Index(raw[i+1:], sealed)
		if j < 0 {
			break
		}
		i += 1 + j
	}
	if n == 0 {
		t.Fatal("sealed record not found in the file")
	}
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
}

func populate(t *testing.T, path string, secrets platform.SecretStore) {
	t.Helper()
	s := mustOpen(t, path, secrets, Options{})
	for i := range 10 {
		k := fmt.Sprintf("k-%d", i)
		if err := s.Put("tokens", k, []byte("SECRET-token-value-"+k)); err != nil {
			t.Fatal(err)
		}
		if err := s.Put("grants", "g-"+k, []byte("grant")); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func corruptFiles(t *testing.T, path string) []string {
	t.Helper()
	m, err := filepath.Glob(path + ".corrupt-*")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCorruptIsMovedAsideNotOverwritten(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.FixedZone("X", 3600))
	for _, tc := range corruptions {
		t.Run(tc.name, func(t *testing.T) {
			path, secrets := newEnv(t)
			populate(t, path, secrets)
			tc.damage(t, path, secrets)
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			keyBefore, keyErrBefore := secrets.Get(platform.DataKeyItem)

			s, err := Open(path, secrets, Options{Now: func() time.Time { return now }})
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded on a damaged store")
			}
			var ce *CorruptError
			if !errors.As(err, &ce) || !errors.Is(err, ErrUndecryptable) {
				t.Fatalf("Open: %v, want *CorruptError wrapping ErrUndecryptable", err)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("error %q does not say %q", err, tc.reason)
			}
			if strings.Contains(err.Error(), "SECRET") {
				t.Errorf("error text leaks a value: %q", err)
			}
			wantMoved := path + ".corrupt-20260304T040607Z"
			if ce.Path != path || ce.MovedTo != wantMoved {
				t.Errorf("CorruptError{Path:%q MovedTo:%q}, want %q and %q", ce.Path, ce.MovedTo, path, wantMoved)
			}
			moved, err := os.ReadFile(wantMoved)
			if err != nil {
				t.Fatalf("moved-aside file: %v", err)
			}
			if !bytes.Equal(moved, before) {
				t.Error("moved-aside file differs from the damaged original")
			}
			if _, err := os.Stat(path); !os.IsNotExist(err) {
				t.Errorf("original path still exists after a refused open (err %v): nothing may be created in its place", err)
			}
			// A refused open must not "repair" the key either.
			keyAfter, keyErrAfter := secrets.Get(platform.DataKeyItem)
			if !bytes.Equal(keyBefore, keyAfter) || errors.Is(keyErrBefore, platform.ErrSecretNotFound) != errors.Is(keyErrAfter, platform.ErrSecretNotFound) {
				t.Error("a refused open changed the data key in the secret store")
			}

			// Opening again without FreshOnCorrupt starts fresh only
			// because the old file is gone; with FreshOnCorrupt on a
			// damaged file, see the next test.
		})
	}
}

func TestFreshOnCorrupt(t *testing.T) {
	for _, tc := range corruptions {
		t.Run(tc.name, func(t *testing.T) {
			path, secrets := newEnv(t)
			populate(t, path, secrets)
			tc.damage(t, path, secrets)
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			s, err := Open(path, secrets, Options{FreshOnCorrupt: true, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatalf("Open with FreshOnCorrupt: %v", err)
			}
			defer s.Close()
			if !strings.Contains(logs.String(), "moved aside") || strings.Contains(logs.String(), "SECRET") {
				t.Errorf("log of the recovery: %q", logs.String())
			}
			ce := s.MovedAside()
			if ce == nil || !errors.Is(ce, ErrUndecryptable) {
				t.Fatalf("MovedAside() = %v, want the *CorruptError", ce)
			}
			files := corruptFiles(t, path)
			if len(files) != 1 || files[0] != ce.MovedTo {
				t.Fatalf("corrupt files %v, MovedTo %q", files, ce.MovedTo)
			}
			if moved, _ := os.ReadFile(ce.MovedTo); !bytes.Equal(moved, before) {
				t.Error("moved-aside bytes differ from the damaged original")
			}
			if _, err := s.Get("tokens", "k-1"); !errors.Is(err, ErrNotFound) {
				t.Errorf("fresh store has old data: %v", err)
			}
			if err := s.Put("tokens", "new", []byte("v")); err != nil {
				t.Fatal(err)
			}
			s.Close()
			s2 := mustOpen(t, path, secrets, Options{})
			defer s2.Close()
			if v, err := s2.Get("tokens", "new"); err != nil || string(v) != "v" {
				t.Errorf("fresh store did not persist: %q, %v", v, err)
			}
		})
	}
}

func TestCorruptNamesNeverCollide(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	path, secrets := newEnv(t)
	var moved []string
	for range 3 {
		populate(t, path, secrets)
		if err := secrets.Delete(platform.DataKeyItem); err != nil {
			t.Fatal(err)
		}
		_, err := Open(path, secrets, Options{Now: func() time.Time { return now }})
		var ce *CorruptError
		if !errors.As(err, &ce) {
			t.Fatalf("Open: %v", err)
		}
		moved = append(moved, ce.MovedTo)
	}
	base := path + ".corrupt-20260101T000000Z"
	want := []string{base, base + "-2", base + "-3"}
	if strings.Join(moved, " ") != strings.Join(want, " ") {
		t.Errorf("moved to %v, want %v", moved, want)
	}
}

func TestNewerFormatRefusedAndUntouched(t *testing.T) {
	for _, fresh := range []bool{false, true} {
		t.Run(fmt.Sprintf("FreshOnCorrupt=%v", fresh), func(t *testing.T) {
			path, secrets := newEnv(t)
			populate(t, path, secrets)
			rawEdit(t, path, func(tx *bolt.Tx) error {
				return tx.Bucket([]byte(metaBucket)).Put([]byte(metaFormat), binary.BigEndian.AppendUint32(nil, formatVersion+1))
			})
			before, _ := os.ReadFile(path)
			fiBefore, _ := os.Stat(path)

			_, err := Open(path, secrets, Options{FreshOnCorrupt: fresh})
			if !errors.Is(err, ErrNewerFormat) {
				t.Fatalf("Open: %v, want ErrNewerFormat", err)
			}
			for _, want := range []string{path, "newer agentidd", fmt.Sprintf("format %d", formatVersion+1), "upgrade", "move it aside"} {
				if !strings.Contains(err.Error(), want) && !strings.Contains(err.Error(), strings.ReplaceAll(want, "it", "the file")) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
			after, _ := os.ReadFile(path)
			fiAfter, _ := os.Stat(path)
			if !bytes.Equal(before, after) || !fiAfter.ModTime().Equal(fiBefore.ModTime()) {
				t.Error("a newer-format file was modified")
			}
			if files := corruptFiles(t, path); len(files) != 0 {
				t.Errorf("a newer-format file was moved aside: %v", files)
			}
		})
	}
}

// failingSecrets is a secret store that cannot be reached.
type failingSecrets struct{ err error }

func (f failingSecrets) Get(string) ([]byte, error) { return nil, f.err }
func (f failingSecrets) Set(string, []byte) error   { return f.err }
func (f failingSecrets) Delete(string) error        { return f.err }
func (f failingSecrets) Describe() string           { return "failing" }

func TestSecretStoreUnavailableLeavesFileAlone(t *testing.T) {
	path, secrets := newEnv(t)
	populate(t, path, secrets)
	before, _ := os.ReadFile(path)
	unavailable := &platform.SecretStoreUnavailableError{Backend: "Secret Service", Reason: "locked", Remedy: "unlock it"}
	_, err := Open(path, failingSecrets{unavailable}, Options{FreshOnCorrupt: true})
	var ue *platform.SecretStoreUnavailableError
	if !errors.As(err, &ue) {
		t.Fatalf("Open: %v, want the secret store's unavailable error", err)
	}
	var ce *CorruptError
	if errors.As(err, &ce) {
		t.Fatalf("an unreachable key was treated as corruption: %v", err)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) || len(corruptFiles(t, path)) != 0 {
		t.Error("state file touched while the key was unreachable")
	}
	// And a first start with the store unreachable creates nothing.
	path2 := filepath.Join(t.TempDir(), "state.db")
	if _, err := Open(path2, failingSecrets{unavailable}, Options{}); !errors.As(err, &ue) {
		t.Fatalf("first Open: %v", err)
	}
	if _, err := os.Stat(path2); !os.IsNotExist(err) {
		t.Errorf("state file created without a data key: %v", err)
	}
}

func TestInUseIsNotCorrupt(t *testing.T) {
	path, secrets := newEnv(t)
	s := mustOpen(t, path, secrets, Options{})
	defer s.Close()
	if err := s.Put("tokens", "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	_, err := Open(path, secrets, Options{FreshOnCorrupt: true})
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("second Open: %v, want ErrInUse", err)
	}
	if len(corruptFiles(t, path)) != 0 {
		t.Error("a file in use was moved aside")
	}
	if v, err := s.Get("tokens", "k"); err != nil || string(v) != "v" {
		t.Errorf("first store disturbed: %q, %v", v, err)
	}
}

func TestZeroByteFileIsInitialized(t *testing.T) {
	path, secrets := newEnv(t)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	// What a crash inside bbolt's very first initialization leaves.
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := mustOpen(t, path, secrets, Options{})
	defer s.Close()
	if err := s.Put("tokens", "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
}

func TestReset(t *testing.T) {
	now := time.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC)
	path, secrets := newEnv(t)
	populate(t, path, secrets)
	before, _ := os.ReadFile(path)

	s := mustOpen(t, path, secrets, Options{})
	if _, err := Reset(path, secrets, Options{Now: func() time.Time { return now }}); !errors.Is(err, ErrInUse) {
		t.Fatalf("Reset while open: %v, want ErrInUse", err)
	}
	s.Close()

	moved, err := Reset(path, secrets, Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if moved != path+".reset-20260203T040506Z" {
		t.Errorf("moved to %q", moved)
	}
	if got, _ := os.ReadFile(moved); !bytes.Equal(got, before) {
		t.Error("reset changed the moved file's bytes")
	}
	if _, err := secrets.Get(platform.DataKeyItem); !errors.Is(err, platform.ErrSecretNotFound) {
		t.Errorf("data key survived reset: %v", err)
	}
	s = mustOpen(t, path, secrets, Options{})
	defer s.Close()
	if _, err := s.Get("tokens", "k-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("state survived reset: %v", err)
	}
	if s.MovedAside() != nil {
		t.Error("a reset store was reported as corrupt")
	}
	// Nothing to reset is fine too.
	if moved, err := Reset(filepath.Join(t.TempDir(), "none.db"), platform.NewFileSecretStore(t.TempDir()), Options{}); err != nil || moved != "" {
		t.Errorf("Reset of nothing = %q, %v", moved, err)
	}
}

func TestCrashBeforeHeaderIsNotCorrupt(t *testing.T) {
	path, secrets := newEnv(t)
	populate(t, path, secrets) // creates the key and a file
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	// What a crash between bbolt's initialization and the header commit
	// leaves: a valid, empty database.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	s := mustOpen(t, path, secrets, Options{})
	defer s.Close()
	if len(corruptFiles(t, path)) != 0 {
		t.Error("an empty database was moved aside")
	}
	if err := s.Put("tokens", "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentUse(t *testing.T) {
	path, secrets := newEnv(t)
	s := mustOpen(t, path, secrets, Options{})
	defer s.Close()
	const workers, ops = 8, 40
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			for i := range ops {
				k := fmt.Sprintf("w%d-%d", w, i)
				if err := s.Put("tokens", k, []byte(k)); err != nil {
					errs <- err
					return
				}
				if v, err := s.Get("tokens", k); err != nil || string(v) != k {
					errs <- fmt.Errorf("Get %s = %q, %v", k, v, err)
					return
				}
				if i%4 == 0 {
					if err := s.ForEach("tokens", func(string, []byte) error { return nil }); err != nil {
						errs <- err
						return
					}
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	if err := s.ForEach("tokens", func(string, []byte) error { n++; return nil }); err != nil || n != workers*ops {
		t.Fatalf("ForEach saw %d records (err %v), want %d", n, err, workers*ops)
	}
}

// TestKeyProblemsDoNotBypassTheFileChecks: a missing or malformed data key
// makes the file unreadable, but only once the file itself has been looked
// at. A file another daemon holds open (say one started with another
// secret_store) must not be moved aside from under it, and a file a newer
// agentidd wrote (which may keep its key elsewhere) must be refused and left
// alone, not treated as damaged.
func TestKeyProblemsDoNotBypassTheFileChecks(t *testing.T) {
	keyStates := []struct {
		name   string
		damage func(t *testing.T, secrets platform.SecretStore)
	}{
		{"key missing", func(t *testing.T, secrets platform.SecretStore) {
			if err := secrets.Delete(platform.DataKeyItem); err != nil {
				t.Fatal(err)
			}
		}},
		{"key wrong length", func(t *testing.T, secrets platform.SecretStore) {
			if err := secrets.Set(platform.DataKeyItem, randBytes(t, 16)); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, ks := range keyStates {
		t.Run(ks.name+"/in use", func(t *testing.T) {
			path, secrets := newEnv(t)
			s := mustOpen(t, path, secrets, Options{})
			defer s.Close()
			if err := s.Put("tokens", "k", []byte("v")); err != nil {
				t.Fatal(err)
			}
			// The second daemon reads its key from a store of its own.
			other := platform.NewFileSecretStore(t.TempDir())
			if err := other.Set(platform.DataKeyItem, randBytes(t, 32)); err != nil {
				t.Fatal(err)
			}
			ks.damage(t, other)
			for _, fresh := range []bool{false, true} {
				if _, err := Open(path, other, Options{FreshOnCorrupt: fresh}); !errors.Is(err, ErrInUse) {
					t.Fatalf("Open (FreshOnCorrupt=%v) while another holds the file: %v, want ErrInUse", fresh, err)
				}
			}
			if files := corruptFiles(t, path); len(files) != 0 {
				t.Fatalf("a file in use was moved aside: %v", files)
			}
			if err := s.Put("tokens", "k2", []byte("v2")); err != nil {
				t.Fatal(err)
			}
			s.Close()
			s2 := mustOpen(t, path, secrets, Options{})
			defer s2.Close()
			if v, err := s2.Get("tokens", "k2"); err != nil || string(v) != "v2" {
				t.Fatalf("a write of the first daemon did not reach the state file: %q, %v", v, err)
			}
		})
		t.Run(ks.name+"/newer format", func(t *testing.T) {
			path, secrets := newEnv(t)
			populate(t, path, secrets)
			rawEdit(t, path, func(tx *bolt.Tx) error {
				return tx.Bucket([]byte(metaBucket)).Put([]byte(metaFormat), binary.BigEndian.AppendUint32(nil, formatVersion+1))
			})
			ks.damage(t, secrets)
			before, _ := os.ReadFile(path)
			for _, fresh := range []bool{false, true} {
				if _, err := Open(path, secrets, Options{FreshOnCorrupt: fresh}); !errors.Is(err, ErrNewerFormat) {
					t.Fatalf("Open (FreshOnCorrupt=%v): %v, want ErrNewerFormat", fresh, err)
				}
			}
			if after, _ := os.ReadFile(path); !bytes.Equal(before, after) || len(corruptFiles(t, path)) != 0 {
				t.Error("a newer-format file was moved or modified")
			}
		})
	}
}

// TestCrashBeforeHeaderWithBadKey: a file that holds no state yet is no
// reason to keep a key that cannot be used; it is replaced, as a missing one
// is, instead of failing every start.
func TestCrashBeforeHeaderWithBadKey(t *testing.T) {
	path, secrets := newEnv(t)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	if err := secrets.Set(platform.DataKeyItem, randBytes(t, 16)); err != nil {
		t.Fatal(err)
	}
	s := mustOpen(t, path, secrets, Options{})
	defer s.Close()
	if err := s.Put("tokens", "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if key, err := secrets.Get(platform.DataKeyItem); err != nil || len(key) != dataKeyLen {
		t.Errorf("data key after open: %d bytes, %v", len(key), err)
	}
}
