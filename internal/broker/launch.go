package broker

import (
	"context"
	"os"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/agentidd/agentidd/internal/attest"
	"github.com/agentidd/agentidd/internal/audit"
	"github.com/agentidd/agentidd/ipc"
	"github.com/agentidd/agentidd/platform"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// Launch is one process tree started by `agentidd exec`: the root (the exec'd command) and the owner (the exec process
// that registered it and serves the tree's managed-identity endpoint). Both are named by pid and start time, so a
// reused pid inherits nothing.
type Launch struct {
	ID         string
	Agent      string
	RootPID    int
	RootStart  uint64
	OwnerPID   int
	OwnerStart uint64
	Started    time.Time
}

// launchPoll is how often a launch's root and owner are checked. A launch whose owner was killed (so EndLaunch never
// comes) stops attesting within this time.
const launchPoll = 500 * time.Millisecond

// maxLaunches bounds registrations: each holds a watcher, and a runaway script should not grow the daemon unbounded.
const maxLaunches = 1024

type launchEntry struct {
	l       Launch
	revoke  func()
	stopped chan struct{}
	once    sync.Once
}

// launchSet is the broker's live launches. The zero value is ready to use.
type launchSet struct {
	mu sync.Mutex
	m  map[string]*launchEntry
}

// RegisterLaunch attests the tree under l.RootPID as l.Agent until EndLaunch, or until the root or the owner exits.
// l.ID is ignored; the returned Launch carries the new random ID.
func (b *Broker) RegisterLaunch(l Launch) (Launch, error) {
	if _, ok := b.cfg.Load().Agent(l.Agent); !ok {
		return Launch{}, rpcError(codes.NotFound, ReasonUnknownAgent, "no agent named "+l.Agent+" in the agentidd config", 0, nil)
	}
	b.launches.mu.Lock()
	defer b.launches.mu.Unlock()
	if len(b.launches.m) >= maxLaunches {
		return Launch{}, rpcError(codes.ResourceExhausted, ReasonRateLimited, "too many live `agentidd exec` launches", time.Second, nil)
	}
	id, revoke := b.attestor.RegisterLaunch(l.Agent, l.RootPID, l.RootStart)
	l.ID, l.Started = id, b.now()
	e := &launchEntry{l: l, revoke: revoke, stopped: make(chan struct{})}
	if b.launches.m == nil {
		b.launches.m = map[string]*launchEntry{}
	}
	b.launches.m[id] = e
	go b.watchLaunch(e)
	b.log.Info("launch registered", "launch", id, "agent", l.Agent, "root_pid", l.RootPID, "owner_pid", l.OwnerPID)
	return l, nil
}

// EndLaunch ends a launch; it reports whether the launch existed. Once it returns, no process attests through it.
func (b *Broker) EndLaunch(id, why string) bool {
	b.launches.mu.Lock()
	e, ok := b.launches.m[id]
	delete(b.launches.m, id)
	b.launches.mu.Unlock()
	if !ok {
		return false
	}
	e.once.Do(func() {
		e.revoke()
		close(e.stopped)
	})
	// Attestations made through the launch are cached like any other; a descendant that outlives the launch must not
	// keep its token access for the cache's TTL.
	b.attested.dropVia(attest.ViaLaunch)
	b.log.Info("launch ended", "launch", id, "agent", e.l.Agent, "reason", why)
	return true
}

// LaunchByID returns a live launch.
func (b *Broker) LaunchByID(id string) (Launch, bool) {
	b.launches.mu.Lock()
	defer b.launches.mu.Unlock()
	e, ok := b.launches.m[id]
	if !ok {
		return Launch{}, false
	}
	return e.l, true
}

// Launches lists the live launches.
func (b *Broker) Launches() []Launch {
	b.launches.mu.Lock()
	defer b.launches.mu.Unlock()
	out := make([]Launch, 0, len(b.launches.m))
	for _, e := range b.launches.m {
		out = append(out, e.l)
	}
	return out
}

// watchLaunch ends the launch when its root or owner is gone: descendants of a dead root are orphans whose ancestry no
// longer proves anything, and without its owner nobody would call EndLaunch.
func (b *Broker) watchLaunch(e *launchEntry) {
	t := time.NewTicker(launchPoll)
	defer t.Stop()
	for {
		select {
		case <-e.stopped:
			return
		case <-t.C:
		}
		why := ""
		switch {
		case !b.sameProcess(e.l.RootPID, e.l.RootStart):
			why = "the launched process exited"
		case !b.sameProcess(e.l.OwnerPID, e.l.OwnerStart):
			why = "the agentidd exec process exited"
		default:
			continue
		}
		if b.EndLaunch(e.l.ID, why) {
			b.recordLaunchEnd(e.l, why)
		}
		return
	}
}

// recordLaunchEnd records an end the daemon noticed itself, as the exec process's own end call is recorded: the audit
// log then shows when each launch.registered window closed.
func (b *Broker) recordLaunchEnd(l Launch, why string) {
	r := audit.Record{Event: audit.EventLaunchEnded, Outcome: audit.OutcomeOK, Reason: why, LaunchID: l.ID, RootPID: l.RootPID,
		Agent: audit.Agent{Name: l.Agent}}
	if ag, ok := b.cfg.Load().Agent(l.Agent); ok {
		r.Agent.AppID = ag.AppID
	}
	if u := b.idp.Account(); u != nil {
		r.User = audit.User{OID: u.OID, UPN: u.UPN}
	}
	_, _ = b.audit.Append(r)
}

func (b *Broker) sameProcess(pid int, start uint64) bool {
	p, err := b.inspector.Inspect(pid)
	return err == nil && p.StartTime == start
}

// LaunchToken runs the normal GetToken path for callerPID, a process in launch id's tree, instead of for the
// connection's peer (which is the exec process serving the tree's managed-identity endpoint). owner is that peer: only
// the process that registered the launch may ask for its tree.
func (b *Broker) LaunchToken(ctx context.Context, owner *ipc.PeerInfo, id string, callerPID int, in *agentidv1.GetTokenRequest, clientID string) (*agentidv1.GetTokenResponse, error) {
	l, ok := b.LaunchByID(id)
	if !ok {
		return nil, rpcError(codes.NotFound, ReasonNotAttested, "no such launch: the `agentidd exec` session has ended", 0, nil)
	}
	if owner == nil || owner.PID != l.OwnerPID || owner.StartTime != l.OwnerStart {
		return nil, rpcError(codes.PermissionDenied, ReasonNotAttested, "only the agentidd exec process that registered a launch may use it", 0, nil)
	}
	if in.GetAgent() != l.Agent {
		return nil, rpcError(codes.PermissionDenied, ReasonNotAttested, "the launch is for agent "+l.Agent+", not "+in.GetAgent(), 0, nil)
	}
	proc, err := b.launchMember(l, callerPID)
	if err != nil {
		return nil, err
	}
	start := proc.StartTime
	caller := ipc.NewPeerInfoForTest(proc.UID, -1, proc.PID, "", start, func() error {
		if !b.sameProcess(callerPID, start) {
			return ipc.ErrPeerGone
		}
		if _, ok := b.LaunchByID(id); !ok {
			return ipc.ErrPeerGone
		}
		return nil
	})
	return b.getToken(ctx, caller, in, clientID)
}

// launchMember checks that pid is the launch's root or descends from it, and runs as the daemon's user.
func (b *Broker) launchMember(l Launch, pid int) (platform.Process, error) {
	notMember := func(msg string) error { return rpcError(codes.PermissionDenied, ReasonNotAttested, msg, 0, nil) }
	if pid <= 0 {
		return platform.Process{}, notMember("no calling process")
	}
	proc, err := b.inspector.Inspect(pid)
	if err != nil {
		return proc, notMember("cannot inspect the calling process")
	}
	if uid := os.Getuid(); uid >= 0 && proc.UID != uid {
		return proc, notMember("the calling process runs as another user")
	}
	if proc.PID == l.RootPID && proc.StartTime == l.RootStart {
		return proc, nil
	}
	anc, _ := b.inspector.Ancestors(pid, 64)
	if slices.Contains(anc, l.RootPID) && b.sameProcess(l.RootPID, l.RootStart) {
		return proc, nil
	}
	return proc, notMember("the calling process is not in the `agentidd exec` process tree of agent " + l.Agent)
}

// dropVia forgets cached attestations made through via.
func (a *attestCache) dropVia(via string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, e := range a.m {
		if e.res.Via == via {
			delete(a.m, k)
		}
	}
}
