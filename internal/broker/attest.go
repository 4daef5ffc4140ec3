package broker

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/agentidd/agentidd/internal/attest"
	"github.com/agentidd/agentidd/internal/config"
	"github.com/agentidd/agentidd/ipc"
	"github.com/agentidd/agentidd/platform"
)

// attestTTL bounds how long one attestation of a live process is reused. The process is identified by (pid, start time),
// so reuse is safe against PID reuse; the TTL only bounds how long a config change to bindings takes to bite on a
// long-lived connection (SetConfig resets the cache anyway).
const attestTTL = 30 * time.Second

type attestKey struct {
	pid       int
	startTime uint64
	agent     string
}

type attestEntry struct {
	proc platform.Process
	res  attest.Result
	at   time.Time
}

// attestCache keeps the fast path free of /proc reads and hashing: a process is attested once per agent and TTL.
type attestCache struct {
	now func() time.Time
	mu  sync.RWMutex
	m   map[attestKey]attestEntry
	// gen counts resets: an attestation decided before a reset (a config reload, a launch ended) must not be stored
	// after it, or it would be served for attestTTL although what it rested on is gone.
	gen atomic.Uint64 // changed under mu, read without it on the fast path
	// seen remembers every process attested as an agent, across resets: an agent stays an agent for AgentInAncestry.
	seen map[attestKey]time.Time
}

func newAttestCache(now func() time.Time) *attestCache {
	return &attestCache{now: now, m: map[attestKey]attestEntry{}, seen: map[attestKey]time.Time{}}
}

func (a *attestCache) reset() {
	a.mu.Lock()
	a.m = map[attestKey]attestEntry{}
	a.gen.Add(1)
	a.mu.Unlock()
}

func (a *attestCache) generation() uint64 { return a.gen.Load() }

func (a *attestCache) get(k attestKey) (attestEntry, bool) {
	a.mu.RLock()
	e, ok := a.m[k]
	a.mu.RUnlock()
	if !ok || a.now().Sub(e.at) > attestTTL {
		return attestEntry{}, false
	}
	return e, true
}

// put stores e unless the cache was reset since generation gen, when the decision was taken.
func (a *attestCache) put(k attestKey, e attestEntry, gen uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.gen.Load() != gen {
		return
	}
	if len(a.m) > 4096 { // bounded: drop everything stale rather than grow without limit
		for key, v := range a.m {
			if a.now().Sub(v.at) > attestTTL {
				delete(a.m, key)
			}
		}
	}
	a.m[k] = e
	if len(a.seen) > 4096 { // bounded too: a day-old process is long gone or has been attested again since
		for key, at := range a.seen {
			if a.now().Sub(at) > 24*time.Hour {
				delete(a.seen, key)
			}
		}
	}
	a.seen[k] = e.at
}

// processes lists every process ever attested here (within the last day), resets included: an agent stays an agent.
func (a *attestCache) processes() []attestKey {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make([]attestKey, 0, len(a.seen))
	for k := range a.seen {
		out = append(out, k)
	}
	return out
}

// AgentInAncestry names the agent that process pid, or one of its ancestors, acts as: a process attested as an agent
// (every consent request's requester is one) or the root of an `agentidd exec` launch. The admin API uses it to keep an
// agent from deciding its own consent by running the agentidd CLI (say, because a prompt injection told it to).
// Inspection errors fail closed: the caller is then treated as an agent.
func (b *Broker) AgentInAncestry(pid int) (string, bool) {
	known := map[int][]attestKey{} // pid → the agents and start times it was seen as
	for _, k := range b.attested.processes() {
		known[k.pid] = append(known[k.pid], k)
	}
	for _, l := range b.attestor.LaunchRoots() {
		known[l.PID] = append(known[l.PID], attestKey{pid: l.PID, startTime: l.StartTime, agent: l.Agent})
	}
	anc, err := b.inspector.Ancestors(pid, maxApproverAncestry)
	if err != nil && !errors.Is(err, platform.ErrNoSuchProcess) {
		return "(unknown: " + err.Error() + ")", true
	}
	for _, p := range append([]int{pid}, anc...) {
		for _, k := range known[p] {
			// The pid alone could be a reused one; only the same process (pid and start time) counts.
			if proc, err := b.inspector.Inspect(p); err == nil && (k.startTime == 0 || proc.StartTime == k.startTime) {
				return k.agent, true
			}
		}
	}
	return "", false
}

// maxApproverAncestry bounds the parent walk; real process trees are far shallower.
const maxApproverAncestry = 64

// attest decides whether the peer process may act as the agent. The cache key carries the start time read at accept,
// so a cached result always describes the process that connected; GetToken re-checks liveness before it answers, which
// catches an exit and PID reuse after this point.
func (b *Broker) attest(peer *ipc.PeerInfo, agent config.Agent) (platform.Process, attest.Result, error) {
	k := attestKey{pid: peer.PID, startTime: peer.StartTime, agent: agent.Name}
	if e, ok := b.attested.get(k); ok {
		// The key survives an exec, so a decision made for the program the process runs now (on another connection)
		// must not cover a connection it accepted before the exec: compare what each connection recorded.
		if ExecutedSinceAccept(peer, e.proc) {
			return e.proc, attest.Result{}, errExecutedSinceAccept
		}
		return e.proc, e.res, nil
	}
	gen := b.attested.generation()
	proc, err := b.inspector.Inspect(peer.PID)
	if err != nil {
		return proc, attest.Result{}, rpcError(codes.PermissionDenied, ReasonNotAttested, "cannot inspect the calling process", 0, nil)
	}
	if peer.StartTime != 0 && proc.StartTime != peer.StartTime {
		return proc, attest.Result{}, rpcError(codes.PermissionDenied, ReasonPeerGone, "the calling process's PID was reused", 0, nil)
	}
	if ExecutedSinceAccept(peer, proc) {
		return proc, attest.Result{}, errExecutedSinceAccept
	}
	res, err := b.attestor.Attest(proc, toAttestAgent(agent))
	if err != nil {
		var na *attest.NotAttestedError
		msg := "this process is not bound to agent " + agent.Name
		if errors.As(err, &na) {
			msg = na.Error()
		}
		return proc, res, rpcError(codes.PermissionDenied, ReasonNotAttested, msg, 0, nil)
	}
	b.attested.put(k, attestEntry{proc: proc, res: res, at: b.now()}, gen)
	return proc, res, nil
}

func toAttestAgent(a config.Agent) attest.Agent {
	out := attest.Agent{Name: a.Name, AppID: a.AppID}
	for _, bnd := range a.Bindings {
		out.Bindings = append(out.Bindings, attest.Binding{ExePath: bnd.Exe, SHA256: bnd.SHA256})
	}
	return out
}

var errExecutedSinceAccept = rpcError(codes.PermissionDenied, ReasonNotAttested,
	"the process that connected may have started another program since (or its executable could not be read when it connected): connect again from the agent itself", 0, nil)

// ExecutedSinceAccept reports whether the process that connected may run another program now than when it was
// accepted: it runs another file, or what it ran at accept or runs now could not be read (either can be arranged on
// purpose). Its pid and start time survive an exec, so without this a process could connect, hand the socket to a
// child and exec a bound agent (or agentidd itself) for the child to be taken for it. Where the OS records nothing
// (Windows), it reports false.
func ExecutedSinceAccept(peer *ipc.PeerInfo, proc platform.Process) bool {
	switch {
	case peer.ExeUnread:
		return true
	case !peer.ExeRecorded:
		return false
	case !proc.HasImageID:
		return true
	}
	return peer.ExeDev != proc.ImageID.Dev || peer.ExeIno != proc.ImageID.Ino
}
