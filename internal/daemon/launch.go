package daemon

import (
	"context"
	"os"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/internal/audit"
	"github.com/agentidd/agentidd/internal/broker"
	"github.com/agentidd/agentidd/ipc"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// The launch RPCs are Admin methods, so the admin gate has already proved the caller is the agentidd binary (an
// `agentidd exec` process). What is checked here is that the launch is that process's own.

// RegisterLaunch attests the tree of root_pid, which must be a direct child of the calling exec process: exec starts
// the command and registers it before the command can do anything useful, and nobody can register a stranger's tree.
func (a *admin) RegisterLaunch(ctx context.Context, in *agentidv1.RegisterLaunchRequest) (*agentidv1.RegisterLaunchResponse, error) {
	owner, ok := ipc.PeerFromContext(ctx)
	if !ok {
		return nil, status.Error(codes.PermissionDenied, "launch registration needs peer credentials")
	}
	// Every answer is recorded, refusals too: a launch lends the agent's identity to a whole process tree, and a
	// refused one shows someone tried to borrow it.
	rec := a.launchRecord(audit.EventLaunchRegistered, owner, in.GetAgent())
	rec.RootPID = int(in.GetRootPid())
	deny := func(err error) (*agentidv1.RegisterLaunchResponse, error) {
		rec.Outcome, rec.Reason = audit.OutcomeDenied, status.Convert(err).Message()
		_, _ = a.d.audit.Append(rec)
		return nil, err
	}
	if in.GetAgent() == "" || in.GetRootPid() <= 0 {
		return deny(status.Error(codes.InvalidArgument, "agent and root_pid are required"))
	}
	root, err := a.d.inspect.Inspect(int(in.GetRootPid()))
	if err != nil {
		return deny(status.Errorf(codes.FailedPrecondition, "cannot inspect pid %d: it exited or is not visible", in.GetRootPid()))
	}
	if root.PPID != owner.PID {
		return deny(status.Errorf(codes.PermissionDenied, "pid %d is not a child of the calling agentidd exec process", root.PID))
	}
	if uid := os.Getuid(); uid >= 0 && root.UID != uid {
		return deny(status.Errorf(codes.PermissionDenied, "pid %d runs as another user", root.PID))
	}
	l, err := a.d.broker.RegisterLaunch(broker.Launch{Agent: in.GetAgent(), RootPID: root.PID, RootStart: root.StartTime,
		OwnerPID: owner.PID, OwnerStart: owner.StartTime})
	if err != nil {
		return deny(err)
	}
	rec.Outcome, rec.LaunchID = audit.OutcomeOK, l.ID
	if ag, ok := a.d.config().Agent(l.Agent); ok {
		rec.Agent.AppID = ag.AppID
	}
	_, _ = a.d.audit.Append(rec)
	return &agentidv1.RegisterLaunchResponse{LaunchId: l.ID}, nil
}

// maxLaunchAgentName bounds the agent name a launch record repeats: whoever runs `agentidd exec` chooses it.
const maxLaunchAgentName = 128

// launchRecord starts a launch record for the exec process owner, in the name of the signed-in user.
func (a *admin) launchRecord(event string, owner *ipc.PeerInfo, agent string) audit.Record {
	r := audit.Record{Event: event, User: a.d.signedInUser(), Peer: a.d.adminPeer(owner)}
	if len(agent) <= maxLaunchAgentName {
		r.Agent.Name = agent
	}
	return r
}

// EndLaunch ends the caller's launch. Ending an unknown one is not an error: the daemon may have ended it already
// because the root exited first. An end the exec process asks for is recorded (it closes the window a
// launch.registered record opened); a refused one too, since only a stranger's call is refused.
func (a *admin) EndLaunch(ctx context.Context, in *agentidv1.EndLaunchRequest) (*agentidv1.EndLaunchResponse, error) {
	owner, ok := ipc.PeerFromContext(ctx)
	if !ok {
		return nil, status.Error(codes.PermissionDenied, "ending a launch needs peer credentials")
	}
	l, ok := a.d.broker.LaunchByID(in.GetLaunchId())
	if !ok {
		return &agentidv1.EndLaunchResponse{}, nil
	}
	rec := a.launchRecord(audit.EventLaunchEnded, owner, l.Agent)
	rec.LaunchID, rec.RootPID = l.ID, l.RootPID
	if ag, ok := a.d.config().Agent(l.Agent); ok {
		rec.Agent.AppID = ag.AppID
	}
	if l.OwnerPID != owner.PID || l.OwnerStart != owner.StartTime {
		const why = "only the agentidd exec process that registered a launch may end it"
		rec.Outcome, rec.Reason = audit.OutcomeDenied, why
		_, _ = a.d.audit.Append(rec)
		return nil, status.Error(codes.PermissionDenied, why)
	}
	const why = "agentidd exec ended it"
	if a.d.broker.EndLaunch(l.ID, why) {
		rec.Outcome, rec.Reason = audit.OutcomeOK, why
		_, _ = a.d.audit.Append(rec)
	}
	return &agentidv1.EndLaunchResponse{}, nil
}

// LaunchToken serves the exec process's managed-identity endpoint: the token is for caller_pid, a member of the tree,
// and goes through the same attestation, consent, audit and cache as GetToken.
func (a *admin) LaunchToken(ctx context.Context, in *agentidv1.LaunchTokenRequest) (*agentidv1.GetTokenResponse, error) {
	owner, _ := ipc.PeerFromContext(ctx)
	if in.GetRequest() == nil {
		return nil, status.Error(codes.InvalidArgument, "request is required")
	}
	return a.d.broker.LaunchToken(ctx, owner, in.GetLaunchId(), int(in.GetCallerPid()), in.GetRequest(), in.GetClientId())
}
