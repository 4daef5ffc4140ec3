package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentidd/agentidd/platform"
)

func secretCmdsCert(t *testing.T, key any, pub any) []byte {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bp"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestReadCertCredential(t *testing.T) {
	k1, _ := rsa.GenerateKey(rand.Reader, 2048)
	k2, _ := rsa.GenerateKey(rand.Reader, 2048)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert1 := secretCmdsCert(t, k1, &k1.PublicKey)
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k1)})
	p8, _ := x509.MarshalPKCS8PrivateKey(k1)
	pkcs8 := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8})
	other := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k2)})
	enc := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: []byte("x")})
	cases := []struct {
		name    string
		content []byte
		wantErr string
	}{
		{"cert + pkcs1", append(append([]byte("comment\n"), cert1...), pkcs1...), ""},
		{"key first, pkcs8", append(append([]byte{}, pkcs8...), cert1...), ""},
		{"no key", cert1, "must hold"},
		{"no cert", pkcs1, "must hold"},
		{"key of another cert", append(append([]byte{}, cert1...), other...), "does not belong"},
		{"encrypted key", append(append([]byte{}, cert1...), enc...), "encrypted"},
		{"ecdsa cert", append(secretCmdsCert(t, ec, &ec.PublicKey), pkcs1...), "not RSA"},
		{"garbage", []byte("not pem at all"), "must hold"},
		{"too big", make([]byte, maxCertFile+10), "larger than"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "c.pem")
			if err := os.WriteFile(p, tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := readCertCredential(p)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "BEGIN") {
					t.Errorf("error quotes the file: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(got), "comment") || !strings.Contains(string(got), "BEGIN CERTIFICATE") || !strings.Contains(string(got), "PRIVATE KEY-----") {
				t.Errorf("stored credential is not just the cert and key:\n%s", got)
			}
		})
	}
	if _, err := readCertCredential(filepath.Join(t.TempDir(), "missing.pem")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestRotateKeepsPrevious(t *testing.T) {
	cases := []struct {
		name     string
		existing string
		set      string
		wantKept bool
		wantPrev string
	}{
		{"first", "", "a", false, ""},
		{"same again", "a", "a", false, ""},
		{"rotation", "a", "b", true, "a"},
		// b was never confirmed good (a is still kept): a third value keeps a, the last credential known to work.
		{"rotation before the daemon used the last one", "a,b", "c", true, "a"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := platform.NewFileSecretStore(t.TempDir())
			if tc.existing != "" {
				for _, v := range strings.Split(tc.existing, ",") {
					if _, err := rotate(s, "blueprint/x", []byte(v)); err != nil {
						t.Fatal(err)
					}
				}
			}
			kept, err := rotate(s, "blueprint/x", []byte(tc.set))
			if err != nil || kept != tc.wantKept {
				t.Fatalf("kept=%v err=%v", kept, err)
			}
			if cur, _ := s.Get("blueprint/x"); string(cur) != tc.set {
				t.Errorf("current = %q", cur)
			}
			prev, err := s.Get("blueprint/x.previous")
			if tc.wantPrev == "" {
				if !errors.Is(err, platform.ErrSecretNotFound) {
					t.Errorf("unexpected previous: %q, %v", prev, err)
				}
			} else if string(prev) != tc.wantPrev {
				t.Errorf("previous = %q, %v", prev, err)
			}
		})
	}
}
