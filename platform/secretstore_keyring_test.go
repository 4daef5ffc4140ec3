package platform

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The values platform/windows and platform/darwin pass to
// NewKeyringSecretStore (credManMaxValue, keychainMaxValue). Those packages
// do not build on Linux, so the numbers are repeated here; the fakes below
// enforce go-keyring's real checks, not these numbers.
const (
	testCredManMaxValue  = 2048
	testKeychainMaxValue = 2048
)

var errTooBig = errors.New("fake keyring: data passed to Set was too big")

// credManLimit is go-keyring's check on Windows (keyring_windows.go): the
// value is the credential blob, at most 2560 bytes.
func credManLimit(service, item, value string) error {
	if len(value) > 2560 {
		return errTooBig
	}
	return nil
}

// keychainLimit is go-keyring's check on macOS (keyring_darwin.go): the value
// is base64-encoded again behind a prefix, and the whole command line sent to
// `security -i` must not exceed 4096 bytes.
func keychainLimit(service, item, value string) error {
	password := "go-keyring-base64:" + base64.StdEncoding.EncodeToString([]byte(value))
	command := fmt.Sprintf("add-generic-password -U -s %s -a %s -w %s\n", shellQuote(service), shellQuote(item), shellQuote(password))
	if len(command) > 4096 {
		return errTooBig
	}
	return nil
}

// shellQuote is go-keyring's internal/shellescape.Quote.
var shellUnsafe = regexp.MustCompile(`[^\w@%+=:,./-]`)

func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	if shellUnsafe.MatchString(s) {
		return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
	}
	return s
}

// limitedKeyring is a string keyring in memory that refuses values its limit
// rejects, and can be told to fail chosen writes.
type limitedKeyring struct {
	limit func(service, item, value string) error

	mu sync.Mutex
	m  map[string]string
	// failSet, if set, is asked before each KeyringSet; a non-nil error
	// fails the write. storeAnyway makes the write land before the error
	// is returned (a timeout after the fact).
	failSet     func(item, value string) error
	storeAnyway bool
	// onGet, if set, runs (outside mu) before each KeyringGet.
	onGet func(item string)
	// failGet, if set, fails the KeyringGet of the items it picks.
	failGet func(item string) error
}

func newLimitedKeyring(limit func(service, item, value string) error) *limitedKeyring {
	return &limitedKeyring{limit: limit, m: map[string]string{}}
}

func (f *limitedKeyring) KeyringGet(item string) (string, error) {
	f.mu.Lock()
	hook := f.onGet
	f.mu.Unlock()
	if hook != nil {
		hook(item)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failGet != nil {
		if err := f.failGet(item); err != nil {
			return "", err
		}
	}
	v, ok := f.m[item]
	if !ok {
		return "", ErrSecretNotFound
	}
	return v, nil
}

func (f *limitedKeyring) KeyringSet(item, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.limit != nil {
		if err := f.limit(SecretService, item, value); err != nil {
			return err
		}
	}
	if f.failSet != nil {
		if err := f.failSet(item, value); err != nil {
			if f.storeAnyway {
				f.m[item] = value
			}
			return err
		}
	}
	f.m[item] = value
	return nil
}

func (f *limitedKeyring) KeyringDelete(item string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.m[item]; !ok {
		return ErrSecretNotFound
	}
	delete(f.m, item)
	return nil
}

func (f *limitedKeyring) Describe() string { return "limited fake keyring" }

func (f *limitedKeyring) items() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.m))
}

func (f *limitedKeyring) get(item string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m[item]
}

func (f *limitedKeyring) put(item, value string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[item] = value
}

func (f *limitedKeyring) remove(item string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.m, item)
}

// testCertPEM is what `agentidd secret set --cert` stores: a self-signed
// RSA-2048 certificate and its unencrypted key, as PEM.
var testCertPEM = sync.OnceValues(func() ([]byte, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "agentidd test blueprint", Organization: []string{"agentidd tests"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{"blueprint.agentidd.test"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return append(out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})...), nil
})

func certPEM(t *testing.T) []byte {
	t.Helper()
	b, err := testCertPEM()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// bigValue is another value that needs chunking, distinct from the cert.
func bigValue(t *testing.T, fill byte) []byte {
	t.Helper()
	return bytes.Repeat([]byte{fill}, 2900)
}

// The longest item name agentidd writes: a rotated blueprint credential.
var longestItem = BlueprintItem("11111111-2222-3333-4444-555555555555") + ".previous"

var limits = []struct {
	name     string
	limit    func(service, item, value string) error
	maxValue int
}{
	{"Credential Manager", credManLimit, testCredManMaxValue},
	{"Keychain", keychainLimit, testKeychainMaxValue},
}

// chunkParts returns the part items of the chunked value stored under item.
func chunkParts(t *testing.T, kr *limitedKeyring, item string) []string {
	t.Helper()
	h, err := parseChunkHeader(item, kr.get(item))
	if err != nil {
		t.Fatalf("%s holds no valid chunk header: %v", item, err)
	}
	var parts []string
	for k := range h.n {
		parts = append(parts, h.part(item, k))
	}
	return parts
}

func wantItems(t *testing.T, kr *limitedKeyring, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := kr.items(); !slices.Equal(got, want) {
		t.Fatalf("keyring holds %q, want %q", got, want)
	}
}

func mustGet(t *testing.T, s SecretStore, item string, want []byte) {
	t.Helper()
	got, err := s.Get(item)
	if err != nil {
		t.Fatalf("Get(%s): %v", item, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%s) = %d bytes, want the %d stored", item, len(got), len(want))
	}
}

func TestKeyringSmallValueIsPlainBase64(t *testing.T) {
	for _, l := range limits {
		t.Run(l.name, func(t *testing.T) {
			kr := newLimitedKeyring(l.limit)
			s := NewKeyringSecretStore(kr, l.maxValue)
			v := bytes.Repeat([]byte("client secret~"), 100) // 1,400 bytes: 1,868 in base64
			if err := s.Set(longestItem, v); err != nil {
				t.Fatal(err)
			}
			if got, want := kr.get(longestItem), base64.StdEncoding.EncodeToString(v); got != want {
				t.Fatalf("stored %q, want the plain base64 %q", got, want)
			}
			wantItems(t, kr, longestItem)
			mustGet(t, s, longestItem, v)
		})
	}
}

func TestKeyringCertificateRoundTrips(t *testing.T) {
	cert := certPEM(t)
	if n := base64.StdEncoding.EncodedLen(len(cert)); n <= 2560 {
		t.Fatalf("test certificate is %d bytes (%d in base64), too small to need chunking", len(cert), n)
	}
	for _, l := range limits {
		t.Run(l.name, func(t *testing.T) {
			kr := newLimitedKeyring(l.limit)
			s := NewKeyringSecretStore(kr, l.maxValue)
			if err := s.Set(longestItem, cert); err != nil {
				t.Fatalf("Set %d-byte certificate: %v", len(cert), err)
			}
			header := kr.get(longestItem)
			if !strings.HasPrefix(header, "agentidd-chunks:v1:") {
				t.Fatalf("header = %q", header)
			}
			if _, err := base64.StdEncoding.DecodeString(header); err == nil {
				t.Fatal("header is valid base64: an older agentidd would misread it as a value")
			}
			parts := chunkParts(t, kr, longestItem)
			if len(parts) != 2 {
				t.Errorf("%d parts, want 2", len(parts))
			}
			for _, p := range parts {
				if err := checkItem(p); err != nil {
					t.Errorf("part name %q: %v", p, err)
				}
			}
			wantItems(t, kr, append(parts, longestItem)...)
			mustGet(t, s, longestItem, cert)
			// A second store on the same keyring (the daemon, after the
			// CLI wrote it) reads it too.
			mustGet(t, NewKeyringSecretStore(kr, l.maxValue), longestItem, cert)
		})
	}
}

// TestKeyringCertificateNeedsChunking shows the bug: without chunking the
// certificate does not fit either backend's limit.
func TestKeyringCertificateNeedsChunking(t *testing.T) {
	cert := certPEM(t)
	for _, l := range limits {
		t.Run(l.name, func(t *testing.T) {
			kr := newLimitedKeyring(l.limit)
			err := NewKeyringSecretStore(kr, 0).Set(longestItem, cert)
			if !errors.Is(err, errTooBig) {
				t.Fatalf("Set without chunking = %v, want the backend's size error", err)
			}
		})
	}
}

func TestKeyringUnlimitedStoresPlain(t *testing.T) {
	kr := newLimitedKeyring(nil)
	s := NewKeyringSecretStore(kr, 0)
	cert := certPEM(t)
	if err := s.Set(longestItem, cert); err != nil {
		t.Fatal(err)
	}
	if kr.get(longestItem) != base64.StdEncoding.EncodeToString(cert) {
		t.Fatal("Secret Service (no limit) did not get plain base64")
	}
	wantItems(t, kr, longestItem)
}

func TestKeyringReplaceLeavesNoOrphans(t *testing.T) {
	item := BlueprintItem("app")
	small := []byte("small secret")
	a, b := certPEM(t), bigValue(t, 'b')
	kr := newLimitedKeyring(credManLimit)
	s := NewKeyringSecretStore(kr, testCredManMaxValue)

	steps := []struct {
		name  string
		value []byte
	}{
		{"new chunked", a},
		{"chunked by chunked", b},
		{"chunked by the same value again", b},
		{"chunked by small", small},
		{"small by chunked", a},
		{"chunked by small again", small},
		{"small by small", []byte("another")},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if err := s.Set(item, st.value); err != nil {
				t.Fatal(err)
			}
			mustGet(t, s, item, st.value)
			if len(st.value) < 100 {
				wantItems(t, kr, item)
				if kr.get(item) != base64.StdEncoding.EncodeToString(st.value) {
					t.Fatalf("small value not stored as plain base64: %q", kr.get(item))
				}
			} else {
				wantItems(t, kr, append(chunkParts(t, kr, item), item)...)
			}
		})
	}
}

func TestKeyringDeleteRemovesEveryPart(t *testing.T) {
	for _, l := range limits {
		t.Run(l.name, func(t *testing.T) {
			kr := newLimitedKeyring(l.limit)
			s := NewKeyringSecretStore(kr, l.maxValue)
			other := AgentItem("other")
			if err := s.Set(other, []byte("unrelated")); err != nil {
				t.Fatal(err)
			}
			if err := s.Set(longestItem, certPEM(t)); err != nil {
				t.Fatal(err)
			}
			if err := s.Delete(longestItem); err != nil {
				t.Fatal(err)
			}
			wantItems(t, kr, other)
			if _, err := s.Get(longestItem); !errors.Is(err, ErrSecretNotFound) {
				t.Fatalf("Get after Delete: %v", err)
			}
			if err := s.Delete(longestItem); err != nil {
				t.Fatalf("Delete absent: %v", err)
			}
		})
	}
}

func TestKeyringDeleteWithPartAlreadyGone(t *testing.T) {
	kr := newLimitedKeyring(credManLimit)
	s := NewKeyringSecretStore(kr, testCredManMaxValue)
	if err := s.Set(longestItem, certPEM(t)); err != nil {
		t.Fatal(err)
	}
	kr.remove(chunkParts(t, kr, longestItem)[0])
	if err := s.Delete(longestItem); err != nil {
		t.Fatal(err)
	}
	wantItems(t, kr)
}

func TestKeyringMissingPartIsAnError(t *testing.T) {
	cert := certPEM(t)
	for _, l := range limits {
		for k := range 2 {
			t.Run(fmt.Sprintf("%s/part %d", l.name, k+1), func(t *testing.T) {
				kr := newLimitedKeyring(l.limit)
				s := NewKeyringSecretStore(kr, l.maxValue)
				if err := s.Set(longestItem, cert); err != nil {
					t.Fatal(err)
				}
				parts := chunkParts(t, kr, longestItem)
				other := kr.get(parts[1-k])
				kr.remove(parts[k])
				got, err := s.Get(longestItem)
				if err == nil || got != nil {
					t.Fatalf("Get = %d bytes, %v; want an error and no data", len(got), err)
				}
				if errors.Is(err, ErrSecretNotFound) {
					t.Fatal("an incomplete value reported as absent: a caller could take it for never set")
				}
				if !strings.Contains(err.Error(), fmt.Sprintf("part %d of 2 is missing", k+1)) {
					t.Errorf("error = %q, want it to name the missing part", err)
				}
				if strings.Contains(err.Error(), other[:16]) || strings.Contains(err.Error(), "PRIVATE") {
					t.Errorf("error leaks secret data: %q", err)
				}
			})
		}
	}
}

func TestKeyringDamagedChunks(t *testing.T) {
	cert := certPEM(t)
	tests := []struct {
		name   string
		damage func(kr *limitedKeyring, header string, parts []string)
		want   string
	}{
		{"newer format", func(kr *limitedKeyring, h string, _ []string) {
			kr.put(longestItem, strings.Replace(h, ":v1:", ":v2:", 1))
		}, "newer agentidd"},
		{"too many parts", func(kr *limitedKeyring, h string, _ []string) {
			kr.put(longestItem, "agentidd-chunks:v1:0123abcd:65:200000")
		}, "damaged chunk header"},
		{"absurd length", func(kr *limitedKeyring, h string, _ []string) {
			kr.put(longestItem, "agentidd-chunks:v1:0123abcd:2:999999999999")
		}, "damaged chunk header"},
		{"no parts", func(kr *limitedKeyring, h string, _ []string) {
			kr.put(longestItem, "agentidd-chunks:v1:0123abcd:0:0")
		}, "damaged chunk header"},
		{"bad generation", func(kr *limitedKeyring, h string, _ []string) {
			kr.put(longestItem, "agentidd-chunks:v1:../x:2:3000")
		}, "damaged chunk header"},
		{"missing field", func(kr *limitedKeyring, h string, _ []string) {
			kr.put(longestItem, h[:strings.LastIndex(h, ":")])
		}, "damaged chunk header"},
		{"part cut short", func(kr *limitedKeyring, _ string, parts []string) {
			kr.put(parts[1], kr.get(parts[1])[:10])
		}, "shorter than its chunk header"},
		{"part too long", func(kr *limitedKeyring, _ string, parts []string) {
			kr.put(parts[0], kr.get(parts[0])+"AAAA")
		}, "damaged part"},
		{"part emptied", func(kr *limitedKeyring, _ string, parts []string) {
			kr.put(parts[0], "")
		}, "damaged part"},
		{"part not base64", func(kr *limitedKeyring, _ string, parts []string) {
			p := kr.get(parts[1])
			kr.put(parts[1], "!!!!"+p[4:])
		}, "not in agentidd's encoding"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kr := newLimitedKeyring(credManLimit)
			s := NewKeyringSecretStore(kr, testCredManMaxValue)
			if err := s.Set(longestItem, cert); err != nil {
				t.Fatal(err)
			}
			tc.damage(kr, kr.get(longestItem), chunkParts(t, kr, longestItem))
			got, err := s.Get(longestItem)
			if err == nil || got != nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Get = %d bytes, %v; want an error saying %q", len(got), err, tc.want)
			}
			if errors.Is(err, ErrSecretNotFound) {
				t.Fatal("damage reported as absent")
			}
		})
	}
}

// TestKeyringFailedWriteKeepsOldValue: a write that fails (or a crash)
// before the header is replaced leaves the old value readable and, where
// the store knows, no parts of the failed write behind.
func TestKeyringFailedWriteKeepsOldValue(t *testing.T) {
	boom := errors.New("fake keyring: write failed")
	old, next := certPEM(t), bigValue(t, 'n')
	tests := []struct {
		name string
		old  []byte
		// fail picks the write that fails, given the old header.
		fail func(oldHeader, item string) bool
	}{
		{"chunked, first part", old, func(oh, item string) bool { return isNewPart(oh, item, ".0") }},
		{"chunked, last part", old, func(oh, item string) bool { return isNewPart(oh, item, ".1") }},
		{"chunked, header", old, func(_, item string) bool { return item == longestItem }},
		{"small, first part", []byte("small"), func(oh, item string) bool { return isNewPart(oh, item, ".0") }},
		{"small, header", []byte("small"), func(_, item string) bool { return item == longestItem }},
		{"absent, last part", nil, func(oh, item string) bool { return isNewPart(oh, item, ".1") }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kr := newLimitedKeyring(credManLimit)
			s := NewKeyringSecretStore(kr, testCredManMaxValue)
			if tc.old != nil {
				if err := s.Set(longestItem, tc.old); err != nil {
					t.Fatal(err)
				}
			}
			before := kr.items()
			oldHeader := kr.get(longestItem)
			kr.failSet = func(item, _ string) error {
				if tc.fail(oldHeader, item) {
					return boom
				}
				return nil
			}
			err := s.Set(longestItem, next)
			if !errors.Is(err, boom) {
				t.Fatalf("Set = %v, want the backend's failure", err)
			}
			if strings.Contains(err.Error(), "nnnn") || strings.Contains(err.Error(), base64.StdEncoding.EncodeToString(next)[:16]) {
				t.Errorf("error leaks the secret: %q", err)
			}
			kr.failSet = nil
			if tc.old == nil {
				if _, err := s.Get(longestItem); !errors.Is(err, ErrSecretNotFound) {
					t.Fatalf("Get after a failed first write: %v, want not found", err)
				}
			} else {
				mustGet(t, s, longestItem, tc.old)
			}
			if got := kr.items(); !slices.Equal(got, before) {
				t.Errorf("keyring holds %q after the failed write, want %q as before", got, before)
			}
			// And the next write goes through.
			if err := s.Set(longestItem, next); err != nil {
				t.Fatal(err)
			}
			mustGet(t, s, longestItem, next)
			wantItems(t, kr, append(chunkParts(t, kr, longestItem), longestItem)...)
		})
	}
}

// isNewPart: item is part suffix of a generation other than oldHeader's.
func isNewPart(oldHeader, item, suffix string) bool {
	if !strings.HasPrefix(item, longestItem+".c") || !strings.HasSuffix(item, suffix) {
		return false
	}
	if isChunkHeader(oldHeader) {
		h, err := parseChunkHeader(longestItem, oldHeader)
		return err != nil || !strings.HasPrefix(item, longestItem+".c"+h.gen+".")
	}
	return true
}

// TestKeyringCrashBeforeHeader simulates a crash after the parts are written:
// the old value is what Get returns; the new parts are orphans that harm
// nothing and a later write works.
func TestKeyringCrashBeforeHeader(t *testing.T) {
	kr := newLimitedKeyring(keychainLimit)
	s := NewKeyringSecretStore(kr, testKeychainMaxValue)
	old, next := certPEM(t), bigValue(t, 'n')
	if err := s.Set(longestItem, old); err != nil {
		t.Fatal(err)
	}
	oldParts := chunkParts(t, kr, longestItem)
	// The "crash": a write of next whose header never landed.
	enc := base64.StdEncoding.EncodeToString(next)
	kr.put(partItem(longestItem, "deadbeef", 0), enc[:2048])
	kr.put(partItem(longestItem, "deadbeef", 1), enc[2048:])
	mustGet(t, s, longestItem, old)
	if err := s.Set(longestItem, next); err != nil {
		t.Fatal(err)
	}
	mustGet(t, s, longestItem, next)
	for _, p := range oldParts {
		if kr.get(p) != "" {
			t.Errorf("old part %s left behind", p)
		}
	}
}

// TestKeyringHeaderWrittenDespiteError: the backend stored the header but
// reported an error (a timeout after the fact). The new parts must not be
// deleted from under it.
func TestKeyringHeaderWrittenDespiteError(t *testing.T) {
	kr := newLimitedKeyring(credManLimit)
	s := NewKeyringSecretStore(kr, testCredManMaxValue)
	old, next := certPEM(t), bigValue(t, 'n')
	if err := s.Set(longestItem, old); err != nil {
		t.Fatal(err)
	}
	kr.storeAnyway = true
	kr.failSet = func(item, _ string) error {
		if item == longestItem {
			return errors.New("fake keyring: timed out")
		}
		return nil
	}
	if err := s.Set(longestItem, next); err != nil {
		t.Fatalf("Set = %v; the header landed, so the write succeeded", err)
	}
	kr.failSet = nil
	mustGet(t, s, longestItem, next)
	wantItems(t, kr, append(chunkParts(t, kr, longestItem), longestItem)...)
}

// TestKeyringHeaderUnknown: the header write reports an error and the store
// cannot read back whether it landed. It did, so deleting the new parts
// would destroy both values; they must stay.
func TestKeyringHeaderUnknown(t *testing.T) {
	kr := newLimitedKeyring(credManLimit)
	s := NewKeyringSecretStore(kr, testCredManMaxValue)
	old, next := certPEM(t), bigValue(t, 'n')
	if err := s.Set(longestItem, old); err != nil {
		t.Fatal(err)
	}
	oldParts := chunkParts(t, kr, longestItem)
	kr.storeAnyway = true
	kr.failSet = func(item, _ string) error {
		if item == longestItem {
			kr.failGet = func(string) error { return errors.New("fake keyring: gone away") }
			return errors.New("fake keyring: timed out")
		}
		return nil
	}
	if err := s.Set(longestItem, next); err == nil {
		t.Fatal("Set succeeded although the store could not tell")
	}
	kr.failSet, kr.failGet = nil, nil
	mustGet(t, s, longestItem, next)
	// The old parts are orphans now: the price of not knowing.
	wantItems(t, kr, append(append(chunkParts(t, kr, longestItem), oldParts...), longestItem)...)
}

// TestKeyringGetRetriesWhenReplaced: another process replaces a chunked
// value between Get's read of the header and of the parts.
func TestKeyringGetRetriesWhenReplaced(t *testing.T) {
	kr := newLimitedKeyring(credManLimit)
	reader := NewKeyringSecretStore(kr, testCredManMaxValue)
	writer := NewKeyringSecretStore(kr, testCredManMaxValue)
	old, next := certPEM(t), bigValue(t, 'n')
	if err := writer.Set(longestItem, old); err != nil {
		t.Fatal(err)
	}
	firstPart := chunkParts(t, kr, longestItem)[0]
	var once sync.Once
	kr.onGet = func(item string) {
		if item == firstPart {
			once.Do(func() {
				if err := writer.Set(longestItem, next); err != nil {
					t.Error(err)
				}
			})
		}
	}
	mustGet(t, reader, longestItem, next)
}

func TestKeyringTooBigForParts(t *testing.T) {
	kr := newLimitedKeyring(credManLimit)
	s := NewKeyringSecretStore(kr, testCredManMaxValue)
	huge := bytes.Repeat([]byte("x"), maxChunkParts*testCredManMaxValue) // 4/3 of what fits
	err := s.Set(longestItem, huge)
	if err == nil || !strings.Contains(err.Error(), "more than limited fake keyring can hold") || strings.Contains(err.Error(), "xxxx") {
		t.Fatalf("Set of %d bytes = %v", len(huge), err)
	}
	wantItems(t, kr)
	// The most that fits does.
	most := huge[:maxChunkParts*testCredManMaxValue/4*3]
	if err := s.Set(longestItem, most); err != nil {
		t.Fatalf("Set of %d bytes: %v", len(most), err)
	}
	mustGet(t, s, longestItem, most)
	if n := len(chunkParts(t, kr, longestItem)); n != maxChunkParts {
		t.Errorf("%d parts, want %d", n, maxChunkParts)
	}
}

func TestKeyringItemTooLongForParts(t *testing.T) {
	kr := newLimitedKeyring(credManLimit)
	s := NewKeyringSecretStore(kr, testCredManMaxValue)
	item := strings.Repeat("i", maxItemLen-5)
	if err := s.Set(item, []byte("small")); err != nil {
		t.Fatalf("small value under a long name: %v", err)
	}
	err := s.Set(item, certPEM(t))
	if err == nil || !strings.Contains(err.Error(), "too long to name them") {
		t.Fatalf("Set = %v", err)
	}
	mustGet(t, s, item, []byte("small"))
	wantItems(t, kr, item)
}

func TestKeyringConcurrentUse(t *testing.T) {
	kr := newLimitedKeyring(keychainLimit)
	s := NewKeyringSecretStore(kr, testKeychainMaxValue)
	values := [][]byte{certPEM(t), bigValue(t, 'a'), []byte("small")}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 20 {
				v := values[(w+i)%len(values)]
				if err := s.Set(longestItem, v); err != nil {
					t.Error(err)
					return
				}
				got, err := s.Get(longestItem)
				if err != nil {
					t.Error(err)
					return
				}
				if !slices.ContainsFunc(values, func(x []byte) bool { return bytes.Equal(x, got) }) {
					t.Error("Get returned a value never stored")
					return
				}
			}
		})
	}
	wg.Wait()
	got, err := s.Get(longestItem)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) > 100 {
		wantItems(t, kr, append(chunkParts(t, kr, longestItem), longestItem)...)
	} else {
		wantItems(t, kr, longestItem)
	}
}

func TestNewKeyringSecretStoreRejectsTinyLimit(t *testing.T) {
	for _, n := range []int{-1, 1, minMaxValue - 1} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("maxValue %d accepted", n)
				}
			}()
			NewKeyringSecretStore(newLimitedKeyring(nil), n)
		}()
	}
}
