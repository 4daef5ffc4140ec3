//go:build linux

package linux

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/agentidd/agentidd/platform"
)

func init() {
	platform.RegisterTCPPeerFinder(func(client, server netip.AddrPort) (platform.TCPPeer, error) {
		return findTCPPeer("/proc", client, server)
	})
}

// findTCPPeer looks the connection up in /proc/net/tcp{,6} (which give the client socket's owner uid and inode) and
// then scans /proc/<pid>/fd for that inode. Processes whose fds we cannot read (other users, unless we are root) are
// not found, so the caller refuses them.
func findTCPPeer(procRoot string, client, server netip.AddrPort) (platform.TCPPeer, error) {
	client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
	server = netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
	var uid int
	var inode uint64
	found := false
	for _, name := range []string{"net/tcp", "net/tcp6"} {
		f, err := os.Open(filepath.Join(procRoot, name))
		if err != nil {
			continue // no IPv6 in this kernel, or no /proc/net
		}
		uid, inode, found, err = scanTCPTable(f, client, server)
		f.Close()
		if err != nil {
			return platform.TCPPeer{}, fmt.Errorf("reading %s: %w", name, err)
		}
		if found {
			break
		}
	}
	if !found || inode == 0 {
		return platform.TCPPeer{}, platform.ErrNoTCPPeer
	}
	pids, err := socketHolders(procRoot, inode)
	if err != nil {
		return platform.TCPPeer{}, err
	}
	if len(pids) == 0 {
		return platform.TCPPeer{}, platform.ErrNoTCPPeer
	}
	return platform.TCPPeer{UID: uid, PIDs: pids}, nil
}

// scanTCPTable finds the socket whose local address is client and remote address is server: the client's end.
func scanTCPTable(f *os.File, client, server netip.AddrPort) (uid int, inode uint64, found bool, err error) {
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<16)
	first := true
	for sc.Scan() {
		if first { // header
			first = false
			continue
		}
		local, remote, u, ino, ok := parseTCPLine(sc.Text())
		if !ok || local != client || remote != server {
			continue
		}
		return u, ino, true, nil
	}
	return 0, 0, false, sc.Err()
}

// parseTCPLine parses one /proc/net/tcp{,6} row: "sl local rem st queues tr retrnsmt uid timeout inode ...".
func parseTCPLine(line string) (local, remote netip.AddrPort, uid int, inode uint64, ok bool) {
	f := strings.Fields(line)
	if len(f) < 10 {
		return local, remote, 0, 0, false
	}
	var okL, okR bool
	local, okL = parseProcAddr(f[1])
	remote, okR = parseProcAddr(f[2])
	u, errU := strconv.Atoi(f[7])
	ino, errI := strconv.ParseUint(f[9], 10, 64)
	if !okL || !okR || errU != nil || errI != nil {
		return local, remote, 0, 0, false
	}
	return local, remote, u, ino, true
}

// parseProcAddr decodes "0100007F:1F90". The kernel prints each 32-bit word of the address as a host-order integer,
// so the bytes are recovered with the native byte order; the port is printed in host order already.
func parseProcAddr(s string) (netip.AddrPort, bool) {
	hexAddr, hexPort, ok := strings.Cut(s, ":")
	if !ok || len(hexPort) != 4 {
		return netip.AddrPort{}, false
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.AddrPort{}, false
	}
	raw, err := hex.DecodeString(hexAddr)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, false
	}
	out := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(out[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(out)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), true
}

// socketHolders returns every pid with an fd on socket inode.
func socketHolders(procRoot string, inode uint64) ([]int, error) {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", procRoot, err)
	}
	want := "socket:[" + strconv.FormatUint(inode, 10) + "]"
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		fdDir := filepath.Join(procRoot, e.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue // exited, or not ours to read
		}
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			if err == nil && target == want {
				pids = append(pids, pid)
				break
			}
		}
	}
	slices.Sort(pids)
	return pids, nil
}
