//go:build windows

package windows

import (
	"bytes"
	"testing"
)

// These run on a real Windows host and under wine (scripts/wine-test):
// wine implements CryptProtectData for the prefix's user, so the seal and
// unseal paths, the entropy binding and the empty-input handling are
// exercised for real rather than only compile-checked. Empty plaintext is
// left out: wine 8's CryptProtectData refuses a NULL pbData ("Invalid
// data") and the sealed store never seals an empty key.

func TestDPAPIRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		plain   []byte
		entropy []byte
	}{
		{"key with entropy", bytes.Repeat([]byte{0xA5}, 32), []byte("agentidd data key v1")},
		{"no entropy", []byte("secret"), nil},
		{"large", bytes.Repeat([]byte("0123456789abcdef"), 4096), []byte("e")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sealed, err := DPAPI{}.Seal(tt.plain, tt.entropy)
			if err != nil {
				t.Fatalf("Seal: %v", err)
			}
			if len(tt.plain) > 0 && bytes.Contains(sealed, tt.plain) {
				t.Fatal("sealed blob contains the plaintext")
			}
			got, err := DPAPI{}.Unseal(sealed, tt.entropy)
			if err != nil {
				t.Fatalf("Unseal: %v", err)
			}
			if !bytes.Equal(got, tt.plain) {
				t.Fatalf("Unseal = %d bytes, want the %d sealed", len(got), len(tt.plain))
			}
		})
	}
}

func TestDPAPIUnsealRefuses(t *testing.T) {
	plain := []byte("data key")
	entropy := []byte("right entropy")
	sealed, err := DPAPI{}.Seal(plain, entropy)
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	tampered := bytes.Clone(sealed)
	tampered[len(tampered)-1] ^= 0xFF
	tests := []struct {
		name    string
		sealed  []byte
		entropy []byte
	}{
		{"wrong entropy", sealed, []byte("wrong entropy")},
		{"missing entropy", sealed, nil},
		{"tampered blob", tampered, entropy},
		{"truncated blob", sealed[:len(sealed)/2], entropy},
		{"garbage", []byte("not a DPAPI blob"), entropy},
		{"empty", nil, entropy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DPAPI{}.Unseal(tt.sealed, tt.entropy)
			if err == nil {
				t.Fatalf("Unseal succeeded with %d bytes, want an error", len(got))
			}
			if bytes.Contains([]byte(err.Error()), plain) {
				t.Fatalf("error %q leaks the plaintext", err)
			}
		})
	}
}

func TestDPAPIName(t *testing.T) {
	if got := (DPAPI{}).Name(); got != "DPAPI" {
		t.Fatalf("Name = %q, want DPAPI", got)
	}
}
