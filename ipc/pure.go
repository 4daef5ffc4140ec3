package ipc

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
)

// Pure helpers used by one OS each, kept untagged so their tests run on
// every OS (Linux CI covers the Windows and macOS logic this way).

// sun_path limits minus the terminating NUL.
const (
	maxSunPathLinux  = 107
	maxSunPathDarwin = 103
)

// fitSocketPath returns the first candidate that fits in maxLen bytes.
// When none fits it returns a short path under /tmp/agentidd-<uid>/ named
// by a hash of the first candidate, so it is stable across restarts; a
// path is never truncated, since two users' truncated paths could collide.
// Listen refuses the /tmp directory if someone else created it first.
func fitSocketPath(candidates []string, uid, maxLen int) string {
	for _, c := range candidates {
		if c != "" && len(c) <= maxLen {
			return c
		}
	}
	seed := ""
	if len(candidates) > 0 {
		seed = candidates[0]
	}
	h := sha256.Sum256([]byte(seed))
	return filepath.Join("/tmp", "agentidd-"+strconv.Itoa(uid), hex.EncodeToString(h[:6])+".sock")
}

var sidRE = regexp.MustCompile(`^S-1-[0-9]+(-[0-9]+)+$`)

// pipeName is the per-user pipe. The SID in the name keeps users' pipes
// apart; the DACL, not the name, is what keeps other users out.
func pipeName(sid string) string { return `\\.\pipe\agentidd-` + sid }

// pipeSDDL grants generic-all to the user's SID and SYSTEM only, with a
// protected DACL (P) so no inherited ACE widens it. The SID is checked
// strictly because it is spliced into SDDL.
func pipeSDDL(sid string) (string, error) {
	if !sidRE.MatchString(sid) {
		return "", fmt.Errorf("ipc: %q is not a SID", sid)
	}
	return "D:P(A;;GA;;;" + sid + ")(A;;GA;;;SY)", nil
}
