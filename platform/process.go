package platform

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// ErrUnsupportedPlatform is returned by facilities that have no
// implementation on this OS (or whose OS package was not linked in).
var ErrUnsupportedPlatform = errors.New("not supported on this platform")

// ErrNoSuchProcess is returned by ProcessInspector when the pid does not
// name a live process (it exited, or never existed).
var ErrNoSuchProcess = errors.New("no such process")

// MaxExeSize caps how much ExeDigest reads. Executables are rarely above a
// few hundred MiB; the cap keeps a hostile "agent" from making the daemon
// hash a multi-GiB file on every new binding.
const MaxExeSize = 512 << 20

// Process is what the daemon knows about a local process. StartTime is an
// OS-specific opaque stamp that, together with PID, names one process for
// its whole life: clock ticks since boot on Linux (stat field 22),
// microseconds since the epoch on macOS, FILETIME of creation on Windows.
// ipc.PeerInfo.StartTime uses the same units so the two can be compared.
type Process struct {
	PID, PPID, UID int
	ExePath        string
	// Image opens the running executable image itself, where the OS has such a handle (Linux: /proc/<pid>/exe). It
	// differs from ExePath when the process sees another file at that path than the daemon does: a process in its own
	// mount namespace can bind-mount any program over a bound agent's path and exec it.
	Image string
	// ImageID is the running image's file identity where the OS can tell (Linux: /proc/<pid>/exe; macOS: the file at the
	// kernel's path for the image); zero elsewhere.
	ImageID FileID
	// HasImageID says ImageID was read (an inode number of 0 is a real one on FUSE).
	HasImageID bool
	StartTime  uint64
}

// ImageToHash is the path attestation hashes: the running image where the OS can open it, else the file at ExePath.
func (p Process) ImageToHash() string {
	if p.Image != "" {
		return p.Image
	}
	return p.ExePath
}

// ProcessInspector reads facts about processes for attestation.
type ProcessInspector interface {
	// Inspect returns the process's parent, owner, executable and start
	// stamp. ErrNoSuchProcess (wrapped) if it is gone.
	Inspect(pid int) (Process, error)
	// ExeDigest returns the hex SHA-256 of the file at path. Results are
	// cached by file identity (device, inode, mtime, size), so calling it per
	// request is cheap and a replaced or rewritten file is hashed again.
	ExeDigest(path string) (string, error)
	// Ancestors returns the parent chain of pid, nearest first, at most max
	// entries, stopping before pid 0 (and after the init process).
	Ancestors(pid int, max int) ([]int, error)
}

// The per-OS package (platform/linux, platform/darwin, platform/windows)
// registers its inspector constructor from init, as with
// RegisterPrompterChooser: those packages import platform for its types,
// so platform cannot call them directly.
var (
	inspectorMu  sync.Mutex
	newInspector func() ProcessInspector
)

// RegisterProcessInspector is called by the per-OS platform package in its
// init.
func RegisterProcessInspector(fn func() ProcessInspector) {
	inspectorMu.Lock()
	defer inspectorMu.Unlock()
	newInspector = fn
}

// NewProcessInspector returns the OS's inspector. When no OS package is
// linked in (the daemon imports the one for its GOOS), every method fails
// with ErrUnsupportedPlatform.
func NewProcessInspector() ProcessInspector {
	inspectorMu.Lock()
	fn := newInspector
	inspectorMu.Unlock()
	if fn == nil {
		return unsupportedInspector{}
	}
	return fn()
}

type unsupportedInspector struct{}

func (unsupportedInspector) Inspect(int) (Process, error) {
	return Process{}, fmt.Errorf("inspect process: %w", ErrUnsupportedPlatform)
}

func (unsupportedInspector) ExeDigest(string) (string, error) {
	return "", fmt.Errorf("hash executable: %w", ErrUnsupportedPlatform)
}

func (unsupportedInspector) Ancestors(int, int) ([]int, error) {
	return nil, fmt.Errorf("process ancestors: %w", ErrUnsupportedPlatform)
}

// FileID names a file independent of its path: device and inode on Unix,
// volume serial and file index on Windows.
type FileID struct {
	Dev, Ino uint64
}

// ExeDigester hashes executables and caches the result by file identity.
// It is shared by the per-OS inspectors; each supplies how to read a
// FileID from an open file.
type ExeDigester struct {
	fileID func(f *os.File, fi os.FileInfo) (FileID, error)
	max    int64

	mu    sync.Mutex
	cache map[digestKey]string

	onHash func() // test hook: counts real hashing work
}

// digestKey is identity plus mtime plus size. A same-size rewrite within
// the filesystem's timestamp granularity would be missed; on ext4, APFS and
// NTFS (ns or 100 ns stamps) that needs two writes inside that window.
type digestKey struct {
	id    FileID
	mtime int64
	size  int64
	// path is part of the key only when the OS gives no FileID, so two
	// different files can never share an entry.
	path string
}

// maxDigestEntries bounds the cache; a daemon sees a handful of agent
// binaries, so overflowing it means something is churning files and
// starting over is cheap.
const maxDigestEntries = 1024

// NewExeDigester returns a digester. fileID may be nil when the OS offers
// no file identity; the path is then used instead.
func NewExeDigester(fileID func(f *os.File, fi os.FileInfo) (FileID, error)) *ExeDigester {
	return &ExeDigester{fileID: fileID, max: MaxExeSize, cache: map[digestKey]string{}}
}

// Digest returns the hex SHA-256 of the regular file at path.
func (d *ExeDigester) Digest(path string) (string, error) {
	// Open first and key on the opened file, so the identity we cache
	// under is the identity of the bytes we read, not of whatever the path
	// pointed to a moment earlier.
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hash executable: %w", err)
	}
	defer f.Close()
	key, err := d.key(f, path)
	if err != nil {
		return "", err
	}
	d.mu.Lock()
	sum, ok := d.cache[key]
	d.mu.Unlock()
	if ok {
		return sum, nil
	}
	if d.onHash != nil {
		d.onHash()
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, d.max+1))
	if err != nil {
		return "", fmt.Errorf("hash executable %s: %w", path, err)
	}
	if n > d.max {
		return "", fmt.Errorf("hash executable %s: larger than %d bytes", path, d.max)
	}
	sum = hex.EncodeToString(h.Sum(nil))
	// A file written to while we read it would cache a hash of a mix of old
	// and new bytes under the old key; don't cache when anything moved.
	if after, err := d.key(f, path); err != nil || after != key {
		return sum, nil
	}
	d.mu.Lock()
	if len(d.cache) >= maxDigestEntries {
		d.cache = map[digestKey]string{}
	}
	d.cache[key] = sum
	d.mu.Unlock()
	return sum, nil
}

func (d *ExeDigester) key(f *os.File, path string) (digestKey, error) {
	fi, err := f.Stat()
	if err != nil {
		return digestKey{}, fmt.Errorf("hash executable: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return digestKey{}, fmt.Errorf("hash executable %s: not a regular file", path)
	}
	if fi.Size() > d.max {
		return digestKey{}, fmt.Errorf("hash executable %s: larger than %d bytes", path, d.max)
	}
	k := digestKey{mtime: fi.ModTime().UnixNano(), size: fi.Size()}
	if d.fileID == nil {
		k.path = path
		return k, nil
	}
	id, err := d.fileID(f, fi)
	if err != nil {
		return digestKey{}, fmt.Errorf("hash executable %s: file identity: %w", path, err)
	}
	k.id = id
	return k, nil
}
