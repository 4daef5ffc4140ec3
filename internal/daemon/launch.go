package daemon

import (
	"context"
	"os"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	if in.GetAgent() == "" || in.GetRootPid() <= 0 {
		return nil, status.Error(codes.InvalidArgument, "agent and root_pid are required")
	}
	root, err := a.d.inspect.Inspect(int(in.GetRootPid()))
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "cannot inspect pid %d: it exited or is not visible", in.GetRootPid())
	}
	if root.PPID != owner.PID {
		return nil, status.Errorf(codes.PermissionDenied, "pid %d is not a child of the calling agentidd exec process", root.PID)
	}
	if uid := os.Getuid(); uid >= 0 && root.UID != uid {
		return nil, status.Errorf(codes.PermissionDenied, "pid %d runs as another user", root.PID)
	}
	l, err := a.d.broker.RegisterLaunch(broker.Launch{Agent: in.GetAgent(), RootPID: root.PID, RootStart: root.StartTime,
		OwnerPID: owner.PID, OwnerStart: owner.StartTime})
	if err != nil {
		return nil, err
	}
	return &agentidv1.RegisterLaunchResponse{LaunchId: l.ID}, nil
}

// EndLaunch ends the caller's launch. Ending an unknown one is not an error: the daemon may have ended it already
// because the root exited first.
func (a *admin) EndLaunch(ctx context.Context, in *agentidv1.EndLaunchRequest) (*agentidv1.EndLaunchResponse, error) {
	owner, ok := ipc.PeerFromContext(ctx)
	if !ok {
		return nil, status.Error(codes.PermissionDenied, "ending a launch needs peer credentials")
	}
	l, ok := a.d.broker.LaunchByID(in.GetLaunchId())
	if !ok {
		return &agentidv1.EndLaunchResponse{}, nil
	}
	if l.OwnerPID != owner.PID || l.OwnerStart != owner.StartTime {
		return nil, status.Error(codes.PermissionDenied, "only the agentidd exec process that registered a launch may end it")
	}
	a.d.broker.EndLaunch(l.ID, "agentidd exec ended it")
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
