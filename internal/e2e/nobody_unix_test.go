//go:build unix

package e2e

import (
	"os/exec"
	"syscall"
)

// asNobody makes cmd run as uid/gid 65534 (needs root): another local user, for the daemon's uid check.
func asNobody(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
}
