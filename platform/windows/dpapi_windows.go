//go:build windows

package windows

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/windows"

	"github.com/agentidd/agentidd/platform"
)

// DPAPI seals data for the current Windows user (user scope, not machine
// scope): another account on the same machine, or the same file on another
// machine, cannot unseal it. The shared file layout and entropy derivation
// live in platform and are tested on Linux; this file is only compile-checked
// there (GOOS=windows go vet).
type DPAPI struct{}

var _ platform.Sealer = DPAPI{}

// Name is "DPAPI".
func (DPAPI) Name() string { return "DPAPI" }

// Seal runs CryptProtectData with CRYPTPROTECT_UI_FORBIDDEN: a daemon has
// nobody to show a prompt to, so asking for one must fail instead of hang.
func (DPAPI) Seal(plain, entropy []byte) ([]byte, error) {
	var out windows.DataBlob
	err := windows.CryptProtectData(blob(plain), nil, blob(entropy), 0, nil, windows.CRYPTPROTECT_UI_FORBIDDEN, &out)
	if err != nil {
		return nil, fmt.Errorf("CryptProtectData: %w", err)
	}
	return takeBlob(&out), nil
}

// Unseal runs CryptUnprotectData with the same entropy and flags.
func (DPAPI) Unseal(sealed, entropy []byte) ([]byte, error) {
	var out windows.DataBlob
	err := windows.CryptUnprotectData(blob(sealed), nil, blob(entropy), 0, nil, windows.CRYPTPROTECT_UI_FORBIDDEN, &out)
	if err != nil {
		return nil, fmt.Errorf("CryptUnprotectData: %w", err)
	}
	return takeBlob(&out), nil
}

func blob(b []byte) *windows.DataBlob {
	if len(b) == 0 {
		return &windows.DataBlob{}
	}
	return &windows.DataBlob{Size: uint32(len(b)), Data: &b[0]}
}

// takeBlob copies a DataBlob that DPAPI allocated into Go memory, wipes the
// original (it may hold the plaintext) and frees it with LocalFree.
func takeBlob(b *windows.DataBlob) []byte {
	if b.Data == nil {
		return []byte{}
	}
	src := unsafe.Slice(b.Data, b.Size)
	out := make([]byte, len(src))
	copy(out, src)
	clear(src)
	_, _ = windows.LocalFree(windows.Handle(unsafe.Pointer(b.Data)))
	return out
}
