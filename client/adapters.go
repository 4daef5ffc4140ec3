package client

import (
	"context"
	"errors"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"golang.org/x/oauth2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/ipc"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// tokenTimeout bounds one daemon call made through an adapter whose interface carries no context (oauth2), beyond the
// consent wait the caller asked for: the user's answer must not be cut short by the adapter's own deadline.
const tokenTimeout = 30 * time.Second

// adapterTimeout is the deadline of an adapter's call for a request built from opts.
func adapterTimeout(opts []Option) time.Duration {
	var req agentidv1.GetTokenRequest
	for _, o := range opts {
		o(&req)
	}
	return tokenTimeout + req.GetConsentWait().AsDuration()
}

// TokenSource returns an oauth2.TokenSource of agent's tokens for scopes, for libraries built on golang.org/x/oauth2.
// Wrap it in oauth2.ReuseTokenSource only if you must: the daemon already caches and refreshes, so every Token call is
// cheap and always returns a token with the daemon's minimum lifetime left.
func (c *Conn) TokenSource(agent string, scopes []string, opts ...Option) oauth2.TokenSource {
	return &tokenSource{c: c, agent: agent, scopes: append([]string(nil), scopes...), opts: opts}
}

type tokenSource struct {
	c      *Conn
	agent  string
	scopes []string
	opts   []Option
}

func (s *tokenSource) Token() (*oauth2.Token, error) {
	ctx, cancel := context.WithTimeout(context.Background(), adapterTimeout(s.opts))
	defer cancel()
	t, err := s.c.Token(ctx, s.agent, s.scopes, s.opts...)
	if err != nil {
		return nil, err
	}
	return &oauth2.Token{AccessToken: t.AccessToken, TokenType: "Bearer", Expiry: t.ExpiresAt}, nil
}

// Credential returns an azcore.TokenCredential of agent's tokens, for Azure SDK clients. The SDK names the scopes per
// call; a claims challenge it passes (continuous access evaluation) is forwarded to the daemon.
func (c *Conn) Credential(agent string, opts ...Option) azcore.TokenCredential {
	return &credential{c: c, agent: agent, opts: opts}
}

type credential struct {
	c     *Conn
	agent string
	opts  []Option
}

func (cr *credential) GetToken(ctx context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	if len(o.Scopes) == 0 {
		return azcore.AccessToken{}, errors.New("agentidd: GetToken needs at least one scope")
	}
	opts := cr.opts
	if o.Claims != "" {
		opts = append(append([]Option(nil), opts...), WithClaims(o.Claims))
	}
	t, err := cr.c.Token(ctx, cr.agent, o.Scopes, opts...)
	if err != nil {
		return azcore.AccessToken{}, credentialError(err)
	}
	return azcore.AccessToken{Token: t.AccessToken, ExpiresOn: t.ExpiresAt}, nil
}

// credentialError marks "no daemon answers" as azidentity's credential-unavailable, the one error on which a
// ChainedTokenCredential tries its next credential, as it does for a managed identity with no endpoint. Every answer
// from the daemon (each carries an ErrorInfo, its own UNAVAILABLE included) stays a failure that ends the chain: a
// refused agent must not fall through to a credential holding the user's own token.
func credentialError(err error) error {
	if status.Code(err) != codes.Unavailable || ipc.ErrorInfo(err) != nil {
		return err
	}
	return &unavailableError{
		unavailable: azidentity.NewCredentialUnavailableError("agentidd: no daemon answers (start it with `agentidd run` or install the service): " + err.Error()),
		err:         err,
	}
}

// unavailableError is azidentity's marker and the gRPC error at once, so errors.As finds the one and status.Code the
// other.
type unavailableError struct {
	unavailable, err error
}

func (e *unavailableError) Error() string   { return e.unavailable.Error() }
func (e *unavailableError) Unwrap() []error { return []error{e.unavailable, e.err} }
