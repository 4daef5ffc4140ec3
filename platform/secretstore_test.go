package platform

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestItemNames(t *testing.T) {
	tests := []struct{ got, want string }{
		{BlueprintItem("11111111-2222"), "blueprint/11111111-2222"},
		{AgentItem("abc"), "agent/abc"},
		{DataKeyItem, "data-key"},
		{SecretService, "agentidd"},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestFileSecretStore(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "secrets")
	s := NewFileSecretStore(dir)
	if !strings.Contains(s.Describe(), "file (0600, no OS protection)") {
		t.Errorf("Describe() = %q", s.Describe())
	}
	if _, err := s.Get(DataKeyItem); !errors.Is(err, ErrSecretNotFound) {
		t.Fatalf("Get before any Set: %v, want ErrSecretNotFound", err)
	}
	tests := []struct {
		item  string
		value []byte
	}{
		{DataKeyItem, bytes.Repeat([]byte{0, 0xff}, 16)},
		{AgentItem("a1"), []byte("secret")},
		{BlueprintItem("../../etc"), []byte("stays inside")},
		{"..x", []byte{}},
	}
	for _, tc := range tests {
		t.Run(tc.item, func(t *testing.T) {
			for _, v := range [][]byte{[]byte("first"), tc.value} {
				if err := s.Set(tc.item, v); err != nil {
					t.Fatalf("Set: %v", err)
				}
				got, err := s.Get(tc.item)
				if err != nil || !bytes.Equal(got, v) {
					t.Fatalf("Get = %q, %v; want %q", got, err, v)
				}
			}
			if err := s.Delete(tc.item); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Get(tc.item); !errors.Is(err, ErrSecretNotFound) {
				t.Fatalf("Get after Delete: %v", err)
			}
			if err := s.Delete(tc.item); err != nil {
				t.Fatalf("Delete absent: %v", err)
			}
		})
	}
	// Everything stayed in dir, with no temp files left behind.
	if err := s.Set(BlueprintItem("../../x"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(root)
	if len(entries) != 1 || entries[0].Name() != "secrets" {
		t.Errorf("files outside the secrets dir: %v", entries)
	}
	entries, _ = os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != "blueprint%2F..%2F..%2Fx.secret" {
		t.Errorf("secrets dir holds %v", entries)
	}
	if runtime.GOOS != "windows" {
		for p, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, entries[0].Name()): 0o600} {
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != want {
				t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
			}
		}
	}
}

func TestFileSecretStoreNarrowsDir(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("POSIX modes")
	}
	dir := filepath.Join(t.TempDir(), "secrets")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := NewFileSecretStore(dir).Set("x", []byte("v")); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(dir)
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", fi.Mode().Perm())
	}
}

func TestInvalidItems(t *testing.T) {
	dir := t.TempDir()
	stores := map[string]SecretStore{
		"file":    NewFileSecretStore(dir),
		"keyring": NewKeyringSecretStore(newFakeKeyring(), 0),
		"sealed":  NewSealedSecretStore(dir, newFakeSealer(t), NewFileSecretStore(dir), DataKeyItem),
	}
	items := []string{"", ".", "..", "a\nb", "tab\there", "é", strings.Repeat("x", maxItemLen+1)}
	for name, s := range stores {
		for _, item := range items {
			if err := s.Set(item, []byte("v")); err == nil {
				t.Errorf("%s: Set(%q) accepted", name, item)
			}
			if _, err := s.Get(item); err == nil || errors.Is(err, ErrSecretNotFound) {
				t.Errorf("%s: Get(%q) = %v, want a validation error", name, item, err)
			}
			if err := s.Delete(item); err == nil {
				t.Errorf("%s: Delete(%q) accepted", name, item)
			}
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("invalid items created files: %v", entries)
	}
}

func TestOpenSecretStore(t *testing.T) {
	secretStoreMu.Lock()
	saved := newSecretStore
	secretStoreMu.Unlock()
	t.Cleanup(func() { RegisterOSSecretStore(saved) })

	dir := t.TempDir()
	s, err := OpenSecretStore("file", dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Set(DataKeyItem, []byte("k")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "secrets", "data-key.secret")); err != nil {
		t.Errorf("file backend not under stateDir/secrets: %v", err)
	}
	if _, err := OpenSecretStore("file", ""); err == nil {
		t.Error("file backend without a state dir accepted")
	}
	if _, err := OpenSecretStore("vault", dir); err == nil || !strings.Contains(err.Error(), `"vault"`) {
		t.Errorf("unknown kind: %v", err)
	}

	RegisterOSSecretStore(nil)
	for _, kind := range []string{"", "os"} {
		_, err := OpenSecretStore(kind, dir)
		var ue *SecretStoreUnavailableError
		if !errors.As(err, &ue) || !strings.Contains(ue.Remedy, `secret_store = "file"`) {
			t.Errorf("kind %q with no OS backend: %v", kind, err)
		}
	}
	fake := NewKeyringSecretStore(newFakeKeyring(), 0)
	var gotDir string
	RegisterOSSecretStore(func(d string) (SecretStore, error) { gotDir = d; return fake, nil })
	if s, err := OpenSecretStore("os", dir); err != nil || s != fake || gotDir != dir {
		t.Errorf("registered backend not used: %v, %v, dir %q", s, err, gotDir)
	}
}

type stubStore struct {
	SecretStore
	err error
}

func (s stubStore) Get(string) ([]byte, error) { return nil, s.err }

func TestProbeSecretStore(t *testing.T) {
	unavailable := &SecretStoreUnavailableError{Backend: "Secret Service", Reason: "locked", Remedy: "unlock it"}
	other := errors.New("boom")
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"answers", nil, nil},
		{"probe item absent", fmt.Errorf("get: %w", ErrSecretNotFound), nil},
		{"unavailable", fmt.Errorf("get: %w", unavailable), unavailable},
		{"other failure", other, other},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ProbeSecretStore(stubStore{err: tc.err})
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("ProbeSecretStore = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestUnavailableErrorText(t *testing.T) {
	e := &SecretStoreUnavailableError{Backend: "Secret Service", Reason: "the keyring is locked", Remedy: "unlock it", Err: errors.New("dbus said no")}
	wrapped := fmt.Errorf("store: %w", e)
	for _, want := range []string{"Secret Service", "the keyring is locked", "unlock it", "dbus said no"} {
		if !strings.Contains(wrapped.Error(), want) {
			t.Errorf("%q lacks %q", wrapped, want)
		}
	}
	var ue *SecretStoreUnavailableError
	if !errors.As(wrapped, &ue) || ue.Remedy != "unlock it" {
		t.Error("not errors.As-able through a wrap")
	}
}

// fakeKeyring is a string keyring in memory.
type fakeKeyring struct{ m map[string]string }

func newFakeKeyring() *fakeKeyring { return &fakeKeyring{m: map[string]string{}} }

func (f *fakeKeyring) KeyringGet(item string) (string, error) {
	v, ok := f.m[item]
	if !ok {
		return "", ErrSecretNotFound
	}
	return v, nil
}
func (f *fakeKeyring) KeyringSet(item, value string) error { f.m[item] = value; return nil }
func (f *fakeKeyring) KeyringDelete(item string) error {
	if _, ok := f.m[item]; !ok {
		return ErrSecretNotFound
	}
	delete(f.m, item)
	return nil
}
func (f *fakeKeyring) Describe() string { return "fake keyring" }

func TestKeyringStore(t *testing.T) {
	kr := newFakeKeyring()
	s := NewKeyringSecretStore(kr, 0)
	binary := []byte{0, 1, 2, 0xff, '\n', 0x80}
	if err := s.Set(DataKeyItem, binary); err != nil {
		t.Fatal(err)
	}
	if kr.m[DataKeyItem] != "AAEC/wqA" {
		t.Errorf("stored %q, want base64 AAEC/wqA", kr.m[DataKeyItem])
	}
	got, err := s.Get(DataKeyItem)
	if err != nil || !bytes.Equal(got, binary) {
		t.Fatalf("Get = %x, %v", got, err)
	}
	if err := s.Delete("absent"); err != nil {
		t.Errorf("Delete absent: %v", err)
	}
	if _, err := s.Get("absent"); !errors.Is(err, ErrSecretNotFound) {
		t.Errorf("Get absent: %v", err)
	}
	kr.m["foreign"] = "not base64 SECRET!"
	_, err = s.Get("foreign")
	if err == nil || strings.Contains(err.Error(), "SECRET") {
		t.Errorf("foreign value: %v", err)
	}
}

// fakeSealer stands in for DPAPI: AES-GCM under a per-"user" key with the
// entropy as additional data, so wrong entropy or another user fails.
type fakeSealer struct{ aead cipher.AEAD }

func newFakeSealer(t *testing.T) fakeSealer {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	b, _ := aes.NewCipher(key)
	g, _ := cipher.NewGCM(b)
	return fakeSealer{g}
}

func (f fakeSealer) Name() string { return "FAKE" }
func (f fakeSealer) Seal(plain, entropy []byte) ([]byte, error) {
	nonce := make([]byte, f.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return f.aead.Seal(nonce, nonce, plain, entropy), nil
}
func (f fakeSealer) Unseal(sealed, entropy []byte) ([]byte, error) {
	n := f.aead.NonceSize()
	if len(sealed) < n {
		return nil, errors.New("short")
	}
	return f.aead.Open(nil, sealed[:n], sealed[n:], entropy)
}

func TestSealedSecretStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	inner := NewKeyringSecretStore(newFakeKeyring(), 0)
	sealer := newFakeSealer(t)
	s := NewSealedSecretStore(dir, sealer, inner, DataKeyItem, "other-key")
	if !strings.Contains(s.Describe(), "fake keyring + FAKE-sealed files") {
		t.Errorf("Describe() = %q", s.Describe())
	}
	key := bytes.Repeat([]byte("K"), 32)
	if err := s.Set(DataKeyItem, key); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(DataKeyItem); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("Get data key = %q, %v", got, err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "data-key.sealed"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(raw, []byte("agentidd-sealed\n\x01\x08data-key")) || bytes.Contains(raw, key) {
		t.Errorf("sealed file layout wrong or plaintext visible: %q", raw)
	}
	// Other items go to the inner store, not to files.
	if err := s.Set(AgentItem("a"), []byte("agent secret")); err != nil {
		t.Fatal(err)
	}
	if v, err := inner.Get(AgentItem("a")); err != nil || string(v) != "agent secret" {
		t.Errorf("agent item not in inner store: %q, %v", v, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("sealed dir holds %d files, want 1", len(entries))
	}
	if err := s.Set("other-key", []byte("other")); err != nil {
		t.Fatal(err)
	}

	otherRaw, _ := os.ReadFile(filepath.Join(dir, "other-key.sealed"))
	otherBlob := otherRaw[len(sealedMagic)+2+len("other-key"):]
	tests := []struct {
		name string
		file []byte
		want string
	}{
		{"file of another item", otherRaw, `holds item "other-key"`},
		{"blob of another item under this header", encodeSealed(DataKeyItem, otherBlob), "cannot unseal"},
		{"newer format", append([]byte(sealedMagic+"\x02"), raw[len(sealedMagic)+1:]...), "newer agentidd"},
		{"old or unknown format", append([]byte(sealedMagic+"\x00"), raw[len(sealedMagic)+1:]...), "unknown sealed format"},
		{"truncated header", raw[:len(sealedMagic)+3], "truncated"},
		{"no blob", raw[:len(sealedMagic)+2+len(DataKeyItem)], "truncated"},
		{"not ours", []byte("hello"), "not an agentidd sealed secret file"},
		{"another user's seal", encodeSealed(DataKeyItem, mustSeal(t, newFakeSealer(t), key)), "cannot unseal"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(dir, "data-key.sealed"), tc.file, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := s.Get(DataKeyItem)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Get = %v, want an error saying %q", err, tc.want)
			}
			if errors.Is(err, ErrSecretNotFound) {
				t.Error("a damaged sealed file reported as absent: the store would make a new key")
			}
			if strings.Contains(err.Error(), string(key)) {
				t.Error("error leaks the secret")
			}
		})
	}
	if err := s.Delete(DataKeyItem); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(DataKeyItem); !errors.Is(err, ErrSecretNotFound) {
		t.Errorf("Get after Delete: %v", err)
	}
	if err := s.Delete(DataKeyItem); err != nil {
		t.Errorf("Delete absent: %v", err)
	}
}

func mustSeal(t *testing.T, s Sealer, plain []byte) []byte {
	t.Helper()
	b, err := s.Seal(plain, sealedEntropy(DataKeyItem))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSealedNewerFormatIsErrSealedNewerFormat(t *testing.T) {
	_, err := decodeSealed("x", []byte(sealedMagic+"\x09\x01x..."))
	if !errors.Is(err, ErrSealedNewerFormat) {
		t.Errorf("decodeSealed = %v, want ErrSealedNewerFormat", err)
	}
}
