// Package client is the Go library agents use to get tokens from agentidd: one call, client.Token(ctx, agent, scopes...).
// It finds the daemon's endpoint the way the daemon does (AGENTIDD_SOCKET, else the per-user default) and speaks the
// local gRPC API with the guard header every call must carry.
package client

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentidd/agentidd/ipc"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// Endpoint returns the daemon endpoint: $AGENTIDD_SOCKET, else the per-user default.
func Endpoint() (string, error) {
	if p := os.Getenv("AGENTIDD_SOCKET"); p != "" {
		return p, nil
	}
	return ipc.DefaultPath()
}

// Conn is a connection to the daemon.
type Conn struct {
	cc *grpc.ClientConn
	// Agent is the AgentIdentity service; Admin only answers the agentidd binary.
	Agent agentidv1.AgentIdentityClient
	Admin agentidv1.AdminClient
}

// localWindow is the HTTP/2 flow-control window on the local connection: far above any token response, so window
// updates are rare.
const localWindow = 1 << 20

// Dial connects to the daemon at endpoint ("" = Endpoint()). The connection is lazy: errors surface on the first call.
func Dial(endpoint string) (*Conn, error) {
	if endpoint == "" {
		var err error
		if endpoint, err = Endpoint(); err != nil {
			return nil, err
		}
	}
	cc, err := grpc.NewClient("passthrough:///agentidd",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return ipc.Dial(ctx, endpoint) }),
		grpc.WithTransportCredentials(ipc.ClientCredentials()),
		grpc.WithPerRPCCredentials(guardHeader{}),
		// A fixed window turns off gRPC's bandwidth-delay estimation, which pings the daemon about once per round trip
		// while responses flow: on a local socket there is no bandwidth to discover, only extra frames and wake-ups.
		grpc.WithInitialWindowSize(localWindow),
		grpc.WithInitialConnWindowSize(localWindow),
	)
	if err != nil {
		return nil, fmt.Errorf("connecting to agentidd at %s: %w", endpoint, err)
	}
	return &Conn{cc: cc, Agent: agentidv1.NewAgentIdentityClient(cc), Admin: agentidv1.NewAdminClient(cc)}, nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.cc.Close() }

// GRPC exposes the underlying connection (health checks, reflection).
func (c *Conn) GRPC() *grpc.ClientConn { return c.cc }

// guardHeader puts the guard header on every call, unary and streaming, as per-call credentials: gRPC asks for the
// same map on each call instead of the client building a new outgoing context per call.
type guardHeader struct{}

var guardMetadata = map[string]string{ipc.GuardHeader: ipc.GuardValue}

func (guardHeader) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return guardMetadata, nil
}

// RequireTransportSecurity is false: the header is a forgery guard, not a secret, and the transport is a local socket.
func (guardHeader) RequireTransportSecurity() bool { return false }

// Issued is an access token with both principals.
type Issued struct {
	AccessToken string
	ExpiresAt   time.Time
	Scopes      []string
	UserOID     string
	UserUPN     string
	AgentAppID  string
	AgentName   string
	GrantID     string
	FromCache   bool
}

// Option adjusts a token request.
type Option func(*agentidv1.GetTokenRequest)

// WithConsentWait waits up to d for the user to approve a first-time request instead of failing with CONSENT_PENDING.
func WithConsentWait(d time.Duration) Option {
	return func(r *agentidv1.GetTokenRequest) { r.ConsentWait = durationpb.New(d) }
}

// WithJustification tells the user, in the consent prompt, why the agent asks.
func WithJustification(s string) Option {
	return func(r *agentidv1.GetTokenRequest) { r.Justification = s }
}

// WithTask binds the consent to a task id (ended by EndTask).
func WithTask(id string) Option { return func(r *agentidv1.GetTokenRequest) { r.TaskId = id } }

// WithAppMode asks for an app-only token of the agent identity (its own authority, not the user's).
func WithAppMode() Option {
	return func(r *agentidv1.GetTokenRequest) { r.Mode = agentidv1.Mode_MODE_APP }
}

// WithClaims passes a CAE claims challenge from a resource's WWW-Authenticate header (decoded JSON).
func WithClaims(claims string) Option {
	return func(r *agentidv1.GetTokenRequest) { r.Claims = claims }
}

// WithMinTTL asks for a token valid for at least d.
func WithMinTTL(d time.Duration) Option {
	return func(r *agentidv1.GetTokenRequest) { r.MinTtl = durationpb.New(d) }
}

// Token asks the daemon for a token for agent with the given scopes.
func (c *Conn) Token(ctx context.Context, agent string, scopes []string, opts ...Option) (*Issued, error) {
	req := &agentidv1.GetTokenRequest{Agent: agent, Scopes: scopes}
	for _, o := range opts {
		o(req)
	}
	resp, err := c.Agent.GetToken(ctx, req)
	if err != nil {
		return nil, err
	}
	return fromResponse(resp), nil
}

func fromResponse(resp *agentidv1.GetTokenResponse) *Issued {
	t := &Issued{AccessToken: resp.GetAccessToken(), ExpiresAt: resp.GetExpiresAt().AsTime(), Scopes: resp.GetScopes(),
		GrantID: resp.GetGrantId(), FromCache: resp.GetSource() == agentidv1.TokenSource_TOKEN_SOURCE_CACHE}
	if p := resp.GetPrincipal(); p != nil {
		t.UserOID, t.UserUPN, t.AgentAppID, t.AgentName = p.GetUserOid(), p.GetUserUpn(), p.GetAgentAppId(), p.GetAgentName()
	}
	return t
}

// Token dials the default endpoint, asks once and closes: the simplest way for an agent to get a token.
func Token(ctx context.Context, agent string, scopes ...string) (*Issued, error) {
	c, err := Dial("")
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Token(ctx, agent, scopes)
}

// Reason returns the stable agentidd ErrorInfo reason of an error (e.g. "CONSENT_PENDING"), or "".
func Reason(err error) string { return ipc.ErrorInfo(err).GetReason() }

// RetryDelay returns the daemon's suggested retry delay, or 0.
func RetryDelay(err error) time.Duration { return ipc.RetryDelay(err) }

// Metadata returns the ErrorInfo metadata (e.g. request_id for CONSENT_PENDING, claims for INTERACTION_REQUIRED).
func Metadata(err error) map[string]string { return ipc.ErrorInfo(err).GetMetadata() }
