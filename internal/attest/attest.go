// Package attest decides which registered agent a local process is.
//
// Two ways in: an exe binding (the process's executable path equals a
// configured path and the file's current SHA-256 equals the configured
// hash) or a launch binding (the process descends from a process tree that
// `agentidd exec` started for that agent). Callers must have checked that
// the peer is still the process that connected (ipc.PeerInfo.Alive) and
// that platform.Process came from that same process (PID and start time).
package attest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/agentidd/agentidd/platform"
)

// Binding ties an agent to one executable.
type Binding struct {
	ExePath string
	SHA256  string // hex
}

// Agent is what attestation needs from an agent's configuration.
type Agent struct {
	Name, AppID string
	Bindings    []Binding
}

// Via values of Result.
const (
	ViaExe    = "exe"
	ViaLaunch = "launch"
)

// Result says how a process was attested.
type Result struct {
	Agent   string
	Via     string // ViaExe or ViaLaunch
	ExePath string
	SHA256  string // empty when a launch-attested exe could not be hashed
	Launch  string // with ViaLaunch, the launch's id: the audit records of the tree's tokens name it
}

// maxAncestry bounds the parent walk for launch bindings; real launch
// trees (shell, interpreter, tool) are a few levels deep.
const maxAncestry = 64

// NotAttestedError says why a process is not the agent it asked to be. It
// names only paths and hash prefixes, which are not secret.
type NotAttestedError struct {
	Agent   string
	ExePath string
	// Found and Expected are 12-hex-digit SHA-256 prefixes; Found is empty
	// when no binding's path matched (nothing was hashed) or hashing failed.
	Found    string
	Expected []string
	Reason   string
}

func (e *NotAttestedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "process %s is not attested as agent %q: %s", e.ExePath, e.Agent, e.Reason)
	if e.Found != "" || len(e.Expected) > 0 {
		fmt.Fprintf(&b, " (sha256 found %s, expected %s)", orNone(e.Found), orNone(strings.Join(e.Expected, " or ")))
	}
	return b.String()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// Attestor matches processes to agents. Safe for concurrent use.
type Attestor struct {
	ins platform.ProcessInspector

	mu       sync.Mutex
	launches map[string]launch // by token
}

type launch struct {
	agent     string
	rootPID   int
	startTime uint64
}

// New returns an Attestor reading processes through inspector.
func New(inspector platform.ProcessInspector) *Attestor {
	return &Attestor{ins: inspector, launches: map[string]launch{}}
}

// RegisterLaunch records that `agentidd exec` started rootPID (with the
// given start time, so a reused pid does not inherit the binding) to run
// as agentName. Processes in that tree attest as the agent until revoke is
// called. token names the registration (for the launched tree to present
// and for audit); it is random and unguessable.
func (a *Attestor) RegisterLaunch(agentName string, rootPID int, startTime uint64) (token string, revoke func()) {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	token = hex.EncodeToString(b[:])
	a.mu.Lock()
	a.launches[token] = launch{agent: agentName, rootPID: rootPID, startTime: startTime}
	a.mu.Unlock()
	var once sync.Once
	return token, func() {
		once.Do(func() {
			a.mu.Lock()
			delete(a.launches, token)
			a.mu.Unlock()
		})
	}
}

// Attest returns how peer is agent, or a *NotAttestedError (or an
// inspection error) when it is not.
func (a *Attestor) Attest(peer platform.Process, agent Agent) (Result, error) {
	na := &NotAttestedError{Agent: agent.Name, ExePath: peer.ExePath}
	var pathMatched bool
	var digestErr error
	found := ""
	for _, b := range agent.Bindings {
		if !samePath(peer.ExePath, b.ExePath) {
			continue
		}
		pathMatched = true
		na.Expected = append(na.Expected, prefix(b.SHA256))
		if found == "" && digestErr == nil {
			found, digestErr = a.ins.ExeDigest(peer.ImageToHash())
		}
		if found != "" && strings.EqualFold(found, b.SHA256) {
			return Result{Agent: agent.Name, Via: ViaExe, ExePath: peer.ExePath, SHA256: found}, nil
		}
	}
	na.Found = prefix(found)

	if id, err := a.launchedAs(peer, agent.Name); err != nil {
		return Result{}, err
	} else if id != "" {
		res := Result{Agent: agent.Name, Via: ViaLaunch, ExePath: peer.ExePath, SHA256: found, Launch: id}
		if res.SHA256 == "" && peer.ExePath != "" {
			// For the audit record only; a launch binding does not depend on it.
			res.SHA256, _ = a.ins.ExeDigest(peer.ImageToHash())
		}
		return res, nil
	}

	switch {
	case digestErr != nil:
		return Result{}, fmt.Errorf("attest agent %q: %w", agent.Name, digestErr)
	case pathMatched:
		na.Reason = "the executable's hash does not match its binding"
	case len(agent.Bindings) == 0:
		na.Reason = "the agent has no exe bindings and the process was not started with `agentidd exec`"
	default:
		na.Reason = "the executable matches none of the agent's bound paths"
	}
	return Result{}, na
}

// LaunchRoot is a process `agentidd exec` started as an agent.
type LaunchRoot struct {
	Agent     string
	PID       int
	StartTime uint64
}

// LaunchRoots lists the live launches.
func (a *Attestor) LaunchRoots() []LaunchRoot {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]LaunchRoot, 0, len(a.launches))
	for _, l := range a.launches {
		out = append(out, LaunchRoot{Agent: l.agent, PID: l.rootPID, StartTime: l.startTime})
	}
	return out
}

// launchedAs returns the id of the launch registered for agent whose root
// peer is or descends from, or "" for none.
func (a *Attestor) launchedAs(peer platform.Process, agent string) (string, error) {
	type root struct {
		id string
		launch
	}
	a.mu.Lock()
	var roots []root
	for id, l := range a.launches {
		if l.agent == agent {
			roots = append(roots, root{id, l})
		}
	}
	a.mu.Unlock()
	if len(roots) == 0 {
		return "", nil
	}
	for _, l := range roots {
		if l.rootPID == peer.PID && l.startTime == peer.StartTime {
			return l.id, nil
		}
	}
	anc, err := a.ins.Ancestors(peer.PID, maxAncestry)
	if err != nil && !errors.Is(err, platform.ErrNoSuchProcess) {
		return "", fmt.Errorf("attest agent %q: %w", agent, err)
	}
	// A gone ancestor ends the walk early; what was read is still valid
	// ancestry, and a broken chain fails closed.
	for _, pid := range anc {
		for _, l := range roots {
			if l.rootPID != pid {
				continue
			}
			// The pid alone could be a reused one; the start time says
			// whether it is still the process exec started.
			p, err := a.ins.Inspect(pid)
			if err != nil {
				continue
			}
			if p.StartTime == l.startTime {
				return l.id, nil
			}
		}
	}
	return "", nil
}

func prefix(hash string) string {
	if len(hash) > 12 {
		return strings.ToLower(hash[:12])
	}
	return strings.ToLower(hash)
}

// samePath compares executable paths as the OS does: case-insensitively
// on Windows (NTFS default) and macOS (APFS default), exactly elsewhere.
func samePath(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	a, b = filepath.Clean(a), filepath.Clean(b)
	if runtime.GOOS == "windows" || runtime.GOOS == "darwin" {
		return strings.EqualFold(a, b)
	}
	return a == b
}
