//go:build !linux && !darwin && !windows

package ipc

import (
	"context"
	"errors"
	"net"
)

// Other OSes have no peer-credential code yet; refuse rather than serve
// without knowing who is calling.
var errUnsupported = errors.New("ipc: this OS is not supported")

func defaultPath() (string, error)                   { return "", errUnsupported }
func listen(string) (net.Listener, error)            { return nil, errUnsupported }
func dial(context.Context, string) (net.Conn, error) { return nil, errUnsupported }
func finishPeer(*conn) error                         { return errUnsupported }
func sameUserAsDaemon(*PeerInfo) error               { return errUnsupported }
