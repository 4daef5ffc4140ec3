// Package pidpath names the executable a macOS process runs (proc_pidpath) and that file's identity. It is its own
// small package because two sides need the same answer: ipc records it when it accepts a connection, platform/darwin
// reports it when it inspects the process, and the broker compares the two to catch a process that exec'd another
// program since it connected. ipc is also linked into agent-side clients, which must not pull in the daemon's
// platform code (the keyring, the digester) for it.
package pidpath

import (
	"fmt"
	"path/filepath"
	"strings"
)

// parse takes proc_pidpath's answer: n bytes of buf, the path NUL-terminated or not.
func parse(buf []byte, n int) (string, error) {
	if n <= 0 || n > len(buf) {
		return "", fmt.Errorf("proc_pidpath: answer of %d bytes", n)
	}
	path := string(buf[:n])
	if i := strings.IndexByte(path, 0); i >= 0 {
		path = path[:i]
	}
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("proc_pidpath: %q is not an absolute path", path)
	}
	return filepath.Clean(path), nil
}
