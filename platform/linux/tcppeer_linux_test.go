//go:build linux

package linux

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/agentidd/agentidd/platform"
)

func TestParseProcAddr(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" = must fail
	}{
		{"0100007F:1F90", "127.0.0.1:8080"},
		{"00000000:0016", "0.0.0.0:22"},
		{"00000000000000000000000001000000:0050", "[::1]:80"},
		{"0000000000000000FFFF00000100007F:0050", "127.0.0.1:80"}, // v4-mapped is unmapped
		{"0100007F", ""},
		{"0100007F:XYZW", ""},
		{"01007F:0050", ""},
		{"zz00007F:0050", ""},
		{"", ""},
	}
	for _, tt := range tests {
		got, ok := parseProcAddr(tt.in)
		if tt.want == "" {
			if ok {
				t.Errorf("parseProcAddr(%q) = %v, want failure", tt.in, got)
			}
			continue
		}
		if !ok || got != netip.MustParseAddrPort(tt.want) {
			t.Errorf("parseProcAddr(%q) = %v, %v; want %s", tt.in, got, ok, tt.want)
		}
	}
}

func TestParseTCPLineRejectsShortAndGarbage(t *testing.T) {
	for _, line := range []string{"", "0: 0100007F:1F90", "0: 0100007F:1F90 0100007F:0050 01 0:0 0:0 0 notauid 0 12"} {
		if _, _, _, _, ok := parseTCPLine(line); ok {
			t.Errorf("parseTCPLine(%q) accepted", line)
		}
	}
}

// TestFindTCPPeer connects to ourselves over loopback and expects to be named, on IPv4 and (if present) IPv6.
func TestFindTCPPeer(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "tcp6" {
				addr = "[::1]:0"
			}
			ln, err := net.Listen(network, addr)
			if err != nil {
				t.Skipf("no %s loopback: %v", network, err)
			}
			defer ln.Close()
			c, err := net.Dial(network, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			client := netip.MustParseAddrPort(s.RemoteAddr().String())
			server := netip.MustParseAddrPort(s.LocalAddr().String())
			peer, err := platform.FindTCPPeer(client, server)
			if err != nil {
				t.Fatalf("FindTCPPeer: %v", err)
			}
			if peer.UID != os.Getuid() || !slices.Contains(peer.PIDs, os.Getpid()) {
				t.Fatalf("peer = %+v, want uid %d holding pid %d", peer, os.Getuid(), os.Getpid())
			}
			// A connection that does not exist names nobody.
			other := netip.AddrPortFrom(client.Addr(), 1)
			if _, err := platform.FindTCPPeer(other, server); !errors.Is(err, platform.ErrNoTCPPeer) {
				t.Fatalf("unused port: err = %v, want ErrNoTCPPeer", err)
			}
		})
	}
}
