package entraemu

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
)

// oauthError is one AADSTS error as Entra sends it (ENTRA-NOTES §4).
type oauthError struct {
	status   int
	err      string // the OAuth "error" value
	code     int    // the AADSTS number
	desc     string // text after "AADSTSnnnnn: "
	suberror string
	claims   string // a claims challenge (JSON) for interaction_required answers
}

func (e *oauthError) Error() string { return fmt.Sprintf("%s AADSTS%d", e.err, e.code) }

func newErr(status int, err string, code int, format string, args ...any) *oauthError {
	return &oauthError{status: status, err: err, code: code, desc: fmt.Sprintf(format, args...)}
}

// The errors the emulator sends. Codes and texts follow Entra's reference list.
func errInvalidRequest(format string, args ...any) *oauthError {
	return newErr(400, "invalid_request", 9002313, "Invalid request. Request is malformed or invalid. "+format, args...)
}

func errMissingParam(name string) *oauthError {
	return newErr(400, "invalid_request", 900144, "The request body must contain the following parameter: '%s'.", name)
}

func errDuplicateParam(name string) *oauthError {
	return newErr(400, "invalid_request", 9000411, "The request is not properly formatted. The parameter '%s' is duplicated.", truncate(name, 64))
}

func errUnknownApp(id string) *oauthError {
	return newErr(400, "unauthorized_client", 700016, "Application with identifier '%s' was not found in the directory. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant.", id)
}

func errInvalidSecret(id string) *oauthError {
	return newErr(401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '%s'.", id)
}

func errAppDisabled(id string) *oauthError {
	return newErr(400, "unauthorized_client", 7000112, "Application '%s' is disabled.", id)
}

func errInvalidScope(scope string) *oauthError {
	return newErr(400, "invalid_scope", 70011, "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope %s is not valid.", scope)
}

func errConsent(client, resource string) *oauthError {
	e := newErr(400, "invalid_grant", 65001, "The user or administrator has not consented to use the application with ID '%s'. Send an interactive authorization request for this user and resource. Resource: %s.", client, resource)
	e.suberror = "consent_required"
	return e
}

func errUserDisabled() *oauthError {
	return newErr(400, "invalid_grant", 50057, "The user account is disabled.")
}

func errRevoked() *oauthError {
	return newErr(400, "invalid_grant", 50173, "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password.")
}

func errRefreshInactive() *oauthError {
	return newErr(400, "invalid_grant", 700082, "The refresh token has expired due to inactivity. The token was inactive for longer than the allowed maximum.")
}

func errCodeExpired() *oauthError {
	return newErr(400, "invalid_grant", 70008, "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.")
}

func errAssertionExpired() *oauthError {
	return newErr(400, "invalid_grant", 500133, "Assertion is not within its valid time range. Ensure that the access token is not expired before using it for user assertion, or request a new token.")
}

func errAssertionInvalid(reason string) *oauthError {
	return newErr(400, "invalid_grant", 50013, "Assertion failed signature validation. [Reason - %s]", reason)
}

func errMFA(claims string) *oauthError {
	e := newErr(400, "invalid_grant", 50076, "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access the resource.")
	e.suberror = "basic_action"
	e.claims = claims
	return e
}

func errMFAEnrollment(claims string) *oauthError {
	e := newErr(400, "interaction_required", 50079, "Due to a configuration change made by your administrator, or because you moved to a new location, you must enroll in multi-factor authentication to access the resource.")
	e.claims = claims
	return e
}

func errReauth(claims string) *oauthError {
	e := newErr(400, "interaction_required", 50133, "Session is invalid due to expiration or recent password change.")
	e.claims = claims
	return e
}

// writeError sends an Entra-shaped error body.
func (e *Emulator) writeError(w http.ResponseWriter, r *http.Request, oe *oauthError) {
	now := e.now().UTC()
	trace := newUUID()
	corr := r.Header.Get("client-request-id")
	if !guidRE.MatchString(corr) {
		corr = newUUID()
	}
	body := map[string]any{
		"error": oe.err,
		"error_description": fmt.Sprintf("AADSTS%d: %s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\nTimestamp: %s",
			oe.code, oe.desc, trace, corr, now.Format("2006-01-02 15:04:05Z")),
		"error_codes":    []int{oe.code},
		"timestamp":      now.Format("2006-01-02 15:04:05Z"),
		"trace_id":       trace,
		"correlation_id": corr,
		"error_uri":      e.base + "/error?code=" + strconv.Itoa(oe.code),
	}
	if oe.suberror != "" {
		body["suberror"] = oe.suberror
	}
	if oe.claims != "" {
		body["claims"] = oe.claims
	}
	e.log.Info("token error", "path", r.URL.Path, "error", oe.err, "code", oe.code)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, oe.status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, `{"error":"server_error"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
