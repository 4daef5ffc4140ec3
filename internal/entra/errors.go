package entra

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	msalerrors "github.com/AzureAD/microsoft-authentication-library-for-go/apps/errors"
)

// Class says what the daemon must do about an IdP failure. It is decided here, once, so that the cache, the broker and the
// status command never disagree about whether an error means "offline, keep serving" or "revoked, purge".
type Class int

const (
	// ClassOther is a failure that is neither the network's nor the IdP's verdict on a principal (a bug, a bad config).
	ClassOther Class = iota
	// ClassTransient: network errors, timeouts, 5xx, 429. Keep serving valid cached tokens and retry with backoff.
	ClassTransient
	// ClassPermanent: the IdP refuses a principal (revoked session, disabled user or agent, consent withdrawn, bad secret).
	// Everything derived from that principal must be purged.
	ClassPermanent
	// ClassInteraction: the user must act (MFA, conditional access, claims challenge). The caller is told, with claims.
	ClassInteraction
	// ClassInvalidRequest: the request itself was wrong (e.g. an unknown scope). Nothing is purged.
	ClassInvalidRequest
)

func (c Class) String() string {
	switch c {
	case ClassTransient:
		return "transient"
	case ClassPermanent:
		return "permanent"
	case ClassInteraction:
		return "interaction_required"
	case ClassInvalidRequest:
		return "invalid_request"
	default:
		return "other"
	}
}

// Subject names which principal a permanent failure condemns, so that a purge touches only what it must.
type Subject int

const (
	SubjectNone    Subject = iota
	SubjectUser            // the user's sign-in: revoked session, expired refresh token, user disabled
	SubjectAgent           // the agent identity or its blueprint: disabled, unknown, bad credential
	SubjectConsent         // the agent's consent for the requested scopes
)

// Error is an IdP failure with its class. Its message carries the AADSTS code and the IdP's short description, never a
// token, assertion or secret: MSAL's own error text embeds the request URL and the whole body, so it is not passed on.
type Error struct {
	Class      Class
	Subject    Subject
	Code       string        // OAuth "error", e.g. invalid_grant
	AADSTS     int           // first of "error_codes", 0 when absent
	Suberror   string        // e.g. consent_required, basic_action
	Claims     string        // claims challenge JSON for ClassInteraction
	Status     int           // HTTP status, 0 for network failures
	RetryAfter time.Duration // from Retry-After on 429/503
	Summary    string        // safe one-line description
	err        error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("identity provider: ")
	b.WriteString(e.Class.String())
	if e.AADSTS != 0 {
		fmt.Fprintf(&b, ": AADSTS%d", e.AADSTS)
	}
	if e.Code != "" {
		b.WriteString(" (" + e.Code + ")")
	}
	if e.Summary != "" {
		b.WriteString(": " + e.Summary)
	}
	return b.String()
}

// Unwrap returns the underlying error only when it is a network or context error: those carry no secrets, and callers
// need errors.Is(err, context.DeadlineExceeded).
func (e *Error) Unwrap() error {
	if e.Status == 0 {
		return e.err
	}
	return nil
}

// MaxRetryAfter caps the IdP's Retry-After. The cache's backoff never waits longer than 5 minutes either: a throttling
// answer asking for an hour or a day would otherwise stop every refresh until the tokens run out, and tell agents to wait
// that long, for an IdP that is usually back within minutes.
const MaxRetryAfter = 5 * time.Minute

// oauthErrorBody is the JSON an Entra token endpoint returns on failure.
type oauthErrorBody struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
	ErrorCodes       []int  `json:"error_codes"`
	Suberror         string `json:"suberror"`
	Claims           string `json:"claims"`
}

// Classify turns any error from an MSAL call into *Error. It is idempotent.
func Classify(err error) *Error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return already
	}
	var callErr msalerrors.CallErr
	if errors.As(err, &callErr) && callErr.Resp != nil {
		return classifyHTTP(callErr, err)
	}
	// A 200 whose body is not the answer expected. Its text quotes the body, a token perhaps, so the network markers
	// below must not look at it: the class would hang on the body's bytes.
	var jsonErr msalerrors.InvalidJsonErr
	if errors.As(err, &jsonErr) {
		if looksLikeHTML(rawBodyFromJSONError(jsonErr.Error())) {
			return &Error{Class: ClassTransient, Summary: summaryHTML}
		}
		return &Error{Class: ClassOther, Summary: "the identity provider's answer could not be read (malformed JSON)"}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return &Error{Class: ClassTransient, Summary: "request to the identity provider timed out or was cancelled", err: err}
	}
	var netErr net.Error
	var urlErr *url.Error
	var opErr *net.OpError
	if errors.As(err, &netErr) || errors.As(err, &urlErr) || errors.As(err, &opErr) {
		return &Error{Class: ClassTransient, Summary: "identity provider unreachable", err: networkOnly(err)}
	}
	if strings.Contains(err.Error(), "TenantDiscoveryResponse: ") {
		// MSAL rejected the OpenID metadata it did get (an issuer that does not match the authority, say): no retry
		// mends that, so it must not pass for "offline".
		return &Error{Class: ClassOther, Summary: "the identity provider's OpenID metadata does not fit the configured authority " +
			"(issuer mismatch or missing endpoints): check the authority in the config"}
	}
	if looksLikeNetwork(err) {
		return &Error{Class: ClassTransient, Summary: "identity provider unreachable", err: networkOnly(err)}
	}
	if errors.Is(err, ErrNoCredential) {
		return &Error{Class: ClassOther, Summary: err.Error(), err: err} // it names the blueprint and the command, no secret
	}
	return &Error{Class: ClassOther, Summary: "unexpected failure talking to the identity provider"}
}

// looksLikeNetwork catches MSAL's wrapping of transport failures, which loses the error chain in places.
func looksLikeNetwork(err error) bool {
	s := err.Error()
	for _, marker := range []string{"connection refused", "connection reset", "EOF", "no such host", "i/o timeout", "TLS handshake", "server misbehaving", "broken pipe"} {
		if strings.Contains(s, marker) {
			return true
		}
	}
	return false
}

// networkOnly keeps the error chain for errors.Is checks but never its text, which may contain a URL with a query.
func networkOnly(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return context.DeadlineExceeded
	}
	return errors.New("network error")
}

func classifyHTTP(ce msalerrors.CallErr, err error) *Error {
	e := &Error{Status: ce.Resp.StatusCode}
	body := bodyFromError(err)
	var oe oauthErrorBody
	if jsonErr := json.Unmarshal(body, &oe); jsonErr == nil {
		e.Code, e.Suberror, e.Claims = safeWord(oe.Error), safeWord(oe.Suberror), oe.Claims
		if len(oe.ErrorCodes) > 0 {
			e.AADSTS = oe.ErrorCodes[0]
		}
		e.Summary = firstLine(oe.ErrorDescription)
	}
	e.RetryAfter = retryAfter(ce.Resp.Header, time.Now())
	switch {
	case e.Status == http.StatusTooManyRequests || e.Status >= 500 ||
		e.Status == http.StatusProxyAuthRequired || e.Status == http.StatusRequestTimeout:
		e.Class = ClassTransient
		if e.Summary == "" {
			e.Summary = fmt.Sprintf("identity provider answered HTTP %d", e.Status)
		}
	case e.Code == "" && looksLikeHTML(rawBodyFromError(err)):
		// No OAuth endpoint answers in HTML: a proxy or a captive portal did, so the IdP was not reached and has
		// said nothing about any principal.
		e.Class, e.Summary = ClassTransient, summaryHTML
	default:
		e.Class, e.Subject = classifyOAuth(e)
	}
	return e
}

// retryAfter reads Retry-After in either of its forms, delay-seconds or an HTTP-date, capped at MaxRetryAfter. A date
// is measured against the answer's Date header when it has one: the IdP computed it on its own clock, and a laptop's
// clock can be off by far more than the delay.
func retryAfter(h http.Header, now time.Time) time.Duration {
	ra := strings.TrimSpace(h.Get("Retry-After"))
	if ra == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseInt(ra, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		if secs >= int64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter // also keeps a huge value from overflowing the Duration
		}
		d = time.Duration(secs) * time.Second
	} else {
		at, err := http.ParseTime(ra)
		if err != nil {
			return 0
		}
		if date, err := http.ParseTime(h.Get("Date")); err == nil {
			now = date
		}
		d = at.Sub(now)
	}
	return min(max(d, 0), MaxRetryAfter)
}

// classifyOAuth maps AADSTS codes (ENTRA-NOTES.md §4, docs/errors.md) to classes. An answer that asks the user to act
// comes first, then codes, then the OAuth error.
func classifyOAuth(e *Error) (Class, Subject) {
	// One code can mean either: 50133 is a CAE re-authentication (interaction_required with a claims challenge: tokens
	// already issued stay good, and signing in with the claims mends it) or, as a bare invalid_grant, a session ended
	// by a password change. Only the second condemns the sign-in; purging the user for the first would throw away valid
	// tokens and drop the claims the caller needs. Consent is the exception: signing in again cannot supply it.
	if e.Code == "interaction_required" || e.Claims != "" {
		if e.Suberror == "consent_required" || e.AADSTS == 65001 || e.AADSTS == 65004 {
			return ClassPermanent, SubjectConsent
		}
		return ClassInteraction, SubjectUser
	}
	switch e.AADSTS {
	case 50076, 50079, 50158, 53003, 50074:
		return ClassInteraction, SubjectUser
	case 50173, 70008, 700082, 50126, 50057, 50133, 700084, 500133, 50013:
		// 50013 (and 500133, expired) refuse the `assertion` of an OBO exchange: the user's token, the same for every
		// agent acting for the user. A refused client assertion (the blueprint's exchange token) is 700027.
		return ClassPermanent, SubjectUser
	case 7000112, 700016, 7000215, 7000222, 700027, 70021:
		// 70021 comes as invalid_request, but it refuses the client assertion (the blueprint's exchange token) for this
		// agent identity: a fault of the agent's registration that no change to the request mends.
		return ClassPermanent, SubjectAgent
	case 65001, 65004:
		return ClassPermanent, SubjectConsent
	case 70011, 90009, 900144, 500011:
		return ClassInvalidRequest, SubjectNone
	}
	switch e.Code {
	case "login_required":
		return ClassInteraction, SubjectUser
	case "consent_required":
		return ClassPermanent, SubjectConsent
	case "invalid_grant":
		if e.Suberror == "consent_required" {
			return ClassPermanent, SubjectConsent
		}
		if e.Suberror == "basic_action" || e.Suberror == "additional_action" {
			return ClassInteraction, SubjectUser
		}
		return ClassPermanent, SubjectUser
	case "invalid_client", "unauthorized_client":
		return ClassPermanent, SubjectAgent
	case "invalid_scope", "invalid_resource", "invalid_request", "unsupported_grant_type":
		return ClassInvalidRequest, SubjectNone
	case "temporarily_unavailable", "server_error":
		return ClassTransient, SubjectNone
	}
	return ClassOther, SubjectNone
}

const summaryHTML = "an HTML page answered instead of the identity provider (a proxy or captive portal in the way?)"

// rawBodyFromError is the body MSAL quotes after "reply status code was NNN:", whatever it is.
func rawBodyFromError(err error) string {
	s := err.Error()
	i := strings.Index(s, "reply status code was ")
	if i < 0 {
		return ""
	}
	s = s[i:]
	j := strings.IndexByte(s, '\n')
	if j < 0 {
		return ""
	}
	return s[j+1:]
}

// rawBodyFromJSONError is the body MSAL quotes in its error for a 200 it could not decode.
func rawBodyFromJSONError(s string) string {
	for _, marker := range []string{"raw message was: ", "json message bytes were: "} {
		if i := strings.Index(s, marker); i >= 0 {
			return s[i+len(marker):]
		}
	}
	return ""
}

func looksLikeHTML(body string) bool {
	body = strings.TrimSpace(body)
	return strings.HasPrefix(body, "<")
}

// bodyFromError extracts the JSON body MSAL puts after "reply status code was NNN:" in its error text. The response body
// itself may already be consumed (ENTRA-NOTES §6), so the text is the reliable source.
func bodyFromError(err error) []byte {
	s := err.Error()
	i := strings.Index(s, "reply status code was ")
	if i < 0 {
		return nil
	}
	s = s[i:]
	j := strings.IndexByte(s, '{')
	if j < 0 {
		return nil
	}
	s = s[j:]
	if k := strings.LastIndexByte(s, '}'); k >= 0 {
		s = s[:k+1]
	}
	return []byte(s)
}

func firstLine(desc string) string {
	if i := strings.IndexAny(desc, "\r\n"); i >= 0 {
		desc = desc[:i]
	}
	// "AADSTS50173: The provided grant has expired ..." → keep the text after the code, bounded.
	if i := strings.Index(desc, ": "); i >= 0 && strings.HasPrefix(desc, "AADSTS") {
		desc = desc[i+2:]
	}
	desc = jwtRE.ReplaceAllString(desc, "[token]")
	desc = secretParamRE.ReplaceAllString(desc, "${1}=[redacted]")
	if len(desc) > 200 {
		desc = desc[:200]
	}
	return desc
}

// jwtRE matches a JWT or the start of one (base64url of '{"' is "eyJ"). Entra's descriptions quote ids and scopes,
// but an intermediary echoing the request would quote the user's token or the exchange token, and the description
// reaches agents and the log.
var jwtRE = regexp.MustCompile(`eyJ[A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]*)*`)

// secretParamRE matches a form parameter that carries a secret, as an intermediary echoing the request body would quote
// it: refresh tokens and client secrets are not JWTs (Entra's refresh tokens start "0.A"), so jwtRE misses them.
var secretParamRE = regexp.MustCompile(`(?i)\b(client_secret|refresh_token|assertion|client_assertion|access_token|id_token|password|code|device_code)=[^&\s"']+`)

// safeWord keeps an OAuth error or suberror value only when it is what those are, a short identifier: the daemon
// compares them, prints them and logs them.
func safeWord(s string) string {
	if len(s) > 64 || jwtRE.MatchString(s) {
		return "unreadable"
	}
	for _, r := range s {
		if !(r == '_' || r == '-' || r == '.' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return "unreadable"
		}
	}
	return s
}
