package ipc

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
)

// UnaryGuard enforces, before any handler: the peer is the daemon's user
// (else PermissionDenied) and the call carries GuardHeader (else
// InvalidArgument). Nothing is exempt, health checks included.
func UnaryGuard() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := guard(ctx); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamGuard is UnaryGuard for streaming calls.
func StreamGuard() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := guard(ss.Context()); err != nil {
			return err
		}
		return handler(srv, ss)
	}
}

// sameUser is per OS: uid on Unix, SID on Windows. A variable so the
// guard's logic is testable without a second user.
var sameUser = sameUserAsDaemon

func guard(ctx context.Context) error {
	p, ok := PeerFromContext(ctx)
	if !ok {
		return StatusError(codes.PermissionDenied, ReasonNotAttested, "peer identity unknown: connect through the agentidd socket", 0, nil)
	}
	if err := sameUser(p); err != nil {
		return StatusError(codes.PermissionDenied, ReasonOtherUser, err.Error(), 0, nil)
	}
	// ValueFromIncomingContext reads the one header without copying the whole metadata map (this runs on every call).
	if v := metadata.ValueFromIncomingContext(ctx, GuardHeader); len(v) != 1 || v[0] != GuardValue {
		return StatusError(codes.InvalidArgument, ReasonInvalidArgument,
			fmt.Sprintf("missing metadata %q: %q; use the agentidd client library", GuardHeader, GuardValue), 0, nil)
	}
	return nil
}
