package broker

import (
	"errors"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/agentidd/agentidd/internal/entra"
	"github.com/agentidd/agentidd/ipc"
)

// ErrorDomain is the ErrorInfo domain of every agentidd error.
const ErrorDomain = ipc.ErrorDomain

// Stable ErrorInfo reasons (docs/errors.md). Clients switch on these, so they never change meaning.
const (
	ReasonSigninRequired      = "SIGNIN_REQUIRED"
	ReasonNotAttested         = ipc.ReasonNotAttested
	ReasonConsentDenied       = "CONSENT_DENIED"
	ReasonPolicy              = "POLICY"
	ReasonConsentPending      = "CONSENT_PENDING"
	ReasonInteractionRequired = "INTERACTION_REQUIRED"
	ReasonIdPUnreachable      = "IDP_UNREACHABLE"
	ReasonInvalidArgument     = ipc.ReasonInvalidArgument
	ReasonUnknownAgent        = "UNKNOWN_AGENT"
	ReasonRateLimited         = "RATE_LIMITED"
	ReasonAgentRejected       = "AGENT_REJECTED"       // the IdP refused the agent identity or its blueprint credential
	ReasonIdPConsentRequired  = "IDP_CONSENT_REQUIRED" // the tenant has not consented the agent identity to the scopes
	ReasonSecretStore         = "SECRET_STORE_UNAVAILABLE"
	ReasonCredentialMissing   = "CREDENTIAL_MISSING" // no blueprint credential stored: `agentidd secret set`
	ReasonPeerGone            = "PEER_GONE"
	ReasonInternal            = "INTERNAL"
	ReasonGrantRevoked        = "GRANT_REVOKED"         // the grant was revoked while the token was being fetched
	ReasonMinTTLUnsatisfiable = "MIN_TTL_UNSATISFIABLE" // the IdP's tokens live shorter than the requested min_ttl
	ReasonAuditUnavailable    = "AUDIT_UNAVAILABLE"     // the audit log cannot be written: no token leaves unrecorded
)

// rpcError builds a status with ErrorInfo (and RetryInfo when retry > 0). msg is shown to the caller, so it must say
// what to do and must never carry a token or secret.
func rpcError(code codes.Code, reason, msg string, retry time.Duration, meta map[string]string) error {
	return ipc.StatusError(code, reason, msg, retry, meta)
}

// idpError maps a classified IdP failure to the caller's status. The table is docs/errors.md.
func idpError(err error, retry time.Duration) error {
	if errors.Is(err, entra.ErrNotSignedIn) {
		return rpcError(codes.Unauthenticated, ReasonSigninRequired, "no user is signed in to agentidd: run `agentidd login`", 0, nil)
	}
	e := entra.Classify(err)
	if errors.Is(e, entra.ErrNoCredential) {
		return rpcError(codes.FailedPrecondition, ReasonCredentialMissing, e.Summary, 0, nil)
	}
	switch e.Class {
	case entra.ClassTransient:
		if retry <= 0 {
			retry = 5 * time.Second
		}
		if e.RetryAfter > retry {
			retry = e.RetryAfter
		}
		return rpcError(codes.Unavailable, ReasonIdPUnreachable, "the identity provider cannot be reached and no valid cached token exists; retry later", retry, nil)
	case entra.ClassInteraction:
		meta := map[string]string{}
		if e.Claims != "" {
			meta["claims"] = e.Claims
		}
		return rpcError(codes.FailedPrecondition, ReasonInteractionRequired, "the user must sign in again interactively (MFA or conditional access): run `agentidd login`", 0, meta)
	case entra.ClassInvalidRequest:
		return rpcError(codes.InvalidArgument, ReasonInvalidArgument, "the identity provider rejected the request: "+e.Error(), 0, nil)
	case entra.ClassPermanent:
		switch e.Subject {
		case entra.SubjectUser:
			return rpcError(codes.Unauthenticated, ReasonSigninRequired, "the user's sign-in is no longer valid ("+e.Error()+"): run `agentidd login`", 0, nil)
		case entra.SubjectConsent:
			return rpcError(codes.PermissionDenied, ReasonIdPConsentRequired, "the tenant has not consented this agent identity to these scopes ("+e.Error()+"): ask an administrator", 0, nil)
		default:
			return rpcError(codes.PermissionDenied, ReasonAgentRejected, "the identity provider refused the agent identity ("+e.Error()+"): check the agent and its blueprint credential", 0, nil)
		}
	}
	return rpcError(codes.Internal, ReasonInternal, "token exchange failed: "+e.Error(), 0, nil)
}
