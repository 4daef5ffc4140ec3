package entra_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	msalerrors "github.com/AzureAD/microsoft-authentication-library-for-go/apps/errors"

	"github.com/agentidd/agentidd/internal/entra"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
)

// msalHTTPError is what MSAL returns for a token endpoint's error answer: the body is only in the error text.
func msalHTTPError(status int, body string) error {
	req, _ := http.NewRequest(http.MethodPost, "https://login.example/tenant/oauth2/v2.0/token", nil)
	return msalerrors.CallErr{Req: req, Resp: &http.Response{StatusCode: status, Header: http.Header{}},
		Err: fmt.Errorf("http call(%s)(%s) error: reply status code was %d:\n%s", req.URL, req.Method, status, body)}
}

const reauthClaims = `{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}`

// TestClassifyInteractionBeforeCodes: one AADSTS code can come as a request for the user to act or as the IdP's final
// word on the sign-in, and the OAuth error and the claims challenge tell which.
func TestClassifyInteractionBeforeCodes(t *testing.T) {
	claims, _ := json.Marshal(reauthClaims)
	cases := []struct {
		name        string
		body        string
		class       entra.Class
		subject     entra.Subject
		keepsClaims bool
	}{
		{"50133 interaction_required with claims (the emulator's users/reauth)",
			`{"error":"interaction_required","error_description":"AADSTS50133: Session is invalid due to expiration or recent password change.\r\nTrace ID: 0\r\nCorrelation ID: 0\r\nTimestamp: 2024-01-01 00:00:00Z","error_codes":[50133],"claims":` + string(claims) + `}`,
			entra.ClassInteraction, entra.SubjectUser, true},
		{"50133 interaction_required without claims",
			`{"error":"interaction_required","error_description":"AADSTS50133: Session is invalid.","error_codes":[50133]}`,
			entra.ClassInteraction, entra.SubjectUser, false},
		{"50133 bare invalid_grant (password changed, session revoked)",
			`{"error":"invalid_grant","error_description":"AADSTS50133: Session is invalid due to expiration or recent password change.","error_codes":[50133]}`,
			entra.ClassPermanent, entra.SubjectUser, false},
		{"50173 invalid_grant with claims",
			`{"error":"invalid_grant","error_description":"AADSTS50173: The provided grant has expired.","error_codes":[50173],"claims":` + string(claims) + `}`,
			entra.ClassInteraction, entra.SubjectUser, true},
		{"50173 bare invalid_grant",
			`{"error":"invalid_grant","error_description":"AADSTS50173: The provided grant has expired.","error_codes":[50173]}`,
			entra.ClassPermanent, entra.SubjectUser, false},
		{"50076 MFA",
			`{"error":"invalid_grant","error_description":"AADSTS50076: MFA.","error_codes":[50076],"suberror":"basic_action","claims":` + string(claims) + `}`,
			entra.ClassInteraction, entra.SubjectUser, true},
		{"65001 consent as interaction_required",
			`{"error":"interaction_required","error_description":"AADSTS65001: not consented.","error_codes":[65001],"suberror":"consent_required"}`,
			entra.ClassPermanent, entra.SubjectConsent, false},
		{"65001 consent as invalid_grant",
			`{"error":"invalid_grant","error_description":"AADSTS65001: not consented.","error_codes":[65001],"suberror":"consent_required"}`,
			entra.ClassPermanent, entra.SubjectConsent, false},
		{"50013 user assertion refused",
			`{"error":"invalid_grant","error_description":"AADSTS50013: Assertion failed signature validation.","error_codes":[50013]}`,
			entra.ClassPermanent, entra.SubjectUser, false},
		{"700027 client assertion refused",
			`{"error":"invalid_client","error_description":"AADSTS700027: Client assertion failed signature validation.","error_codes":[700027]}`,
			entra.ClassPermanent, entra.SubjectAgent, false},
		{"7000112 agent disabled",
			`{"error":"unauthorized_client","error_description":"AADSTS7000112: disabled.","error_codes":[7000112]}`,
			entra.ClassPermanent, entra.SubjectAgent, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := entra.Classify(msalHTTPError(http.StatusBadRequest, c.body))
			if e.Class != c.class || e.Subject != c.subject {
				t.Errorf("class %v subject %v, want %v subject %v", e.Class, e.Subject, c.class, c.subject)
			}
			if got := e.Claims == reauthClaims; got != c.keepsClaims {
				t.Errorf("claims %q kept = %v, want %v", e.Claims, got, c.keepsClaims)
			}
		})
	}
}

// TestClassifyEmulatorReauth classifies the emulator's real answer to an exchange after a CAE re-authentication event
// (users/reauth), as the daemon gets it through MSAL: the user must act, with the claims, and the sign-in is not lost.
func TestClassifyEmulatorReauth(t *testing.T) {
	emu := emutest.Start(t, emutest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := signedInClient(t, ctx, emu)
	if _, err := c.OnBehalfOf(ctx, emutest.AgentAppID, []string{emutest.ResourceScopeRead}, ""); err != nil {
		t.Fatalf("exchange before the re-authentication event: %v", err)
	}

	emu.RequireReauth(emutest.DefaultUserUPN)
	_, err := c.OnBehalfOf(ctx, emutest.AgentAppID, []string{emutest.ResourceScopeRead}, "")
	var e *entra.Error
	if !errors.As(err, &e) {
		t.Fatalf("exchange after the re-authentication event: %v, want an *entra.Error", err)
	}
	if e.AADSTS != 50133 || e.Code != "interaction_required" {
		t.Fatalf("the emulator answered %v, want AADSTS50133 interaction_required", e)
	}
	if got := entra.Classify(err); got.Class != entra.ClassInteraction || got.Subject != entra.SubjectUser {
		t.Errorf("classified %v subject %v, want %v subject %v", got.Class, got.Subject, entra.ClassInteraction, entra.SubjectUser)
	}
	if !strings.Contains(e.Claims, `"nbf"`) {
		t.Errorf("claims challenge %q, want the emulator's nbf challenge", e.Claims)
	}
}

// TestMissingCredentialIsNotAnIdPFailure: with no blueprint credential stored, an exchange fails before any request to
// the IdP, and the error (through MSAL's assertion callback) still says so and what to run, rather than "unexpected
// failure talking to the identity provider".
func TestMissingCredentialIsNotAnIdPFailure(t *testing.T) {
	emu := emutest.Start(t, emutest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := signedInClientWith(t, ctx, emu, func() (string, error) {
		return "", fmt.Errorf("%w for blueprint %s: run `agentidd secret set`", entra.ErrNoCredential, emutest.BlueprintAppID)
	})
	_, err := c.OnBehalfOf(ctx, emutest.AgentAppID, []string{emutest.ResourceScopeRead}, "")
	e := entra.Classify(err)
	if !errors.Is(e, entra.ErrNoCredential) || e.Class != entra.ClassOther || !strings.Contains(e.Summary, "agentidd secret set") {
		t.Fatalf("exchange without a credential: %v (class %v, summary %q), want ErrNoCredential naming the command", err, e.Class, e.Summary)
	}
}

// TestClassifyRetryAfter: Retry-After comes as delay-seconds or as an HTTP-date (RFC 9110 §10.2.3), and Entra and the
// proxies in front of it send both. A date read as "no delay" let the daemon hammer a throttling IdP; a delay taken as
// given let one answer (a day, say) silence every refresh until the tokens ran out. The date is measured against the
// answer's own Date header when there is one, so a laptop with a skewed clock reads the delay the IdP meant.
func TestClassifyRetryAfter(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	cases := []struct {
		name   string
		status int
		header http.Header
		want   time.Duration
	}{
		{"seconds", 429, http.Header{"Retry-After": {"7"}}, 7 * time.Second},
		{"seconds with spaces", 503, http.Header{"Retry-After": {" 12 "}}, 12 * time.Second},
		{"http-date against the Date header", 429, http.Header{
			"Retry-After": {now.Add(90 * time.Second).Format(http.TimeFormat)},
			"Date":        {now.Format(http.TimeFormat)}}, 90 * time.Second},
		{"http-date against a skewed Date header", 503, http.Header{
			"Retry-After": {now.Add(-time.Hour + 30*time.Second).Format(http.TimeFormat)},
			"Date":        {now.Add(-time.Hour).Format(http.TimeFormat)}}, 30 * time.Second},
		{"http-date in the past", 429, http.Header{"Retry-After": {now.Add(-time.Minute).Format(http.TimeFormat)}}, 0},
		{"capped seconds", 429, http.Header{"Retry-After": {"86400"}}, entra.MaxRetryAfter},
		{"capped http-date", 429, http.Header{"Retry-After": {now.Add(48 * time.Hour).Format(http.TimeFormat)},
			"Date": {now.Format(http.TimeFormat)}}, entra.MaxRetryAfter},
		{"huge seconds do not overflow", 429, http.Header{"Retry-After": {"99999999999999"}}, entra.MaxRetryAfter},
		{"negative", 429, http.Header{"Retry-After": {"-5"}}, 0},
		{"garbage", 429, http.Header{"Retry-After": {"soon"}}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := msalHTTPError(c.status, "")
			var ce msalerrors.CallErr
			errors.As(err, &ce)
			ce.Resp.Header = c.header
			e := entra.Classify(ce)
			if e.Class != entra.ClassTransient {
				t.Fatalf("class %v, want transient", e.Class)
			}
			// An HTTP-date without a Date header is measured against this machine's clock, which moved on a little.
			if d := e.RetryAfter - c.want; d > 0 || d < -2*time.Second || (c.want == 0 && e.RetryAfter != 0) {
				t.Errorf("RetryAfter = %v, want %v", e.RetryAfter, c.want)
			}
		})
	}
}

// TestClassifyEmulatorRequestAndAgentRefusals runs exchanges the emulator refuses the way Entra does and checks the
// class the daemon acts on. An unknown resource (AADSTS500011, invalid_resource) is the agent's request to fix, not
// an unclassified answer reported as a bug; an exchange token the IdP will not take for this agent identity
// (AADSTS70021, sent as invalid_request) is the agent identity's problem, which no change to the request can mend.
func TestClassifyEmulatorRequestAndAgentRefusals(t *testing.T) {
	emu := emutest.Start(t, emutest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := signedInClient(t, ctx, emu)

	_, err := c.OnBehalfOf(ctx, emutest.AgentAppID, []string{"api://unknown.contoso.example/Files.Read"}, "")
	if e := entra.Classify(err); e.AADSTS != 500011 || e.Class != entra.ClassInvalidRequest || e.Subject != entra.SubjectNone {
		t.Errorf("unknown resource: %v (class %v subject %v), want AADSTS500011 as an invalid request", e, e.Class, e.Subject)
	}
	_, err = c.AppOnly(ctx, emutest.AgentAppID, []string{"api://unknown.contoso.example/.default"}, "")
	if e := entra.Classify(err); e.AADSTS != 500011 || e.Class != entra.ClassInvalidRequest {
		t.Errorf("unknown resource, app-only: %v (class %v), want AADSTS500011 as an invalid request", e, e.Class)
	}
}

func TestClassifyRequestAndAgentCodes(t *testing.T) {
	cases := []struct {
		name    string
		body    string
		class   entra.Class
		subject entra.Subject
	}{
		{"500011 unknown resource",
			`{"error":"invalid_resource","error_description":"AADSTS500011: The resource principal named api://x was not found in the tenant named contoso.","error_codes":[500011]}`,
			entra.ClassInvalidRequest, entra.SubjectNone},
		{"invalid_resource without a known code",
			`{"error":"invalid_resource","error_description":"AADSTS123: no.","error_codes":[123]}`,
			entra.ClassInvalidRequest, entra.SubjectNone},
		{"70021 exchange token not for this agent identity",
			`{"error":"invalid_request","error_description":"AADSTS70021: No matching federated identity record found for presented assertion.","error_codes":[70021]}`,
			entra.ClassPermanent, entra.SubjectAgent},
		{"28000 scope with two resources stays a bad request",
			`{"error":"invalid_request","error_description":"AADSTS28000: more than one resource.","error_codes":[28000]}`,
			entra.ClassInvalidRequest, entra.SubjectNone},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := entra.Classify(msalHTTPError(http.StatusBadRequest, c.body))
			if e.Class != c.class || e.Subject != c.subject {
				t.Errorf("class %v subject %v, want %v subject %v", e.Class, e.Subject, c.class, c.subject)
			}
		})
	}
}

// TestClassifiedErrorNeverQuotesAToken: the IdP's error_description becomes part of the message agents see and the
// daemon logs. Entra's own descriptions quote ids and scopes, but an intermediary (or an IdP's debugging mode) that
// echoes the request quotes the user's token or the exchange token: a JWT must never get through.
func TestClassifiedErrorNeverQuotesAToken(t *testing.T) {
	const jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJvaWQiOiJ1c2VyIiwiYXVkIjoiYmx1ZXByaW50In0.c2lnbmF0dXJlLXRoYXQtbXVzdC1ub3QtbGVhaw"
	for _, desc := range []string{
		"AADSTS50013: Assertion failed signature validation. assertion=" + jwt + " was refused.",
		"AADSTS50013: Assertion failed: '" + jwt + "'",
		"AADSTS50013: bad JWT " + jwt[:60],
	} {
		body, _ := json.Marshal(map[string]any{"error": "invalid_grant", "error_description": desc, "error_codes": []int{50013}})
		e := entra.Classify(msalHTTPError(http.StatusBadRequest, string(body)))
		if strings.Contains(e.Error(), "eyJ") || strings.Contains(e.Summary, "eyJ") {
			t.Errorf("classified error quotes a token: %q", e.Error())
		}
		if !strings.Contains(e.Summary, "Assertion failed") && !strings.Contains(e.Summary, "bad JWT") {
			t.Errorf("summary %q lost the description around the token", e.Summary)
		}
	}
	// A request body echoed back: secrets that are no JWTs (a refresh token "0.A…", a client secret) go too.
	echoed := "AADSTS50013: Bad request: grant_type=refresh_token&refresh_token=0.AXoAsecretRefresh-Token_value&client_secret=s3cr3t~Value&scope=openid"
	body, _ := json.Marshal(map[string]any{"error": "invalid_grant", "error_description": echoed, "error_codes": []int{50013}})
	e := entra.Classify(msalHTTPError(http.StatusBadRequest, string(body)))
	for _, secret := range []string{"0.AXoAsecretRefresh-Token_value", "s3cr3t~Value"} {
		if strings.Contains(e.Error(), secret) {
			t.Errorf("classified error quotes a secret from an echoed request: %q", e.Error())
		}
	}
	if !strings.Contains(e.Summary, "grant_type=refresh_token") {
		t.Errorf("summary %q lost the harmless parameters", e.Summary)
	}
	body, _ = json.Marshal(map[string]any{"error": jwt, "suberror": "x " + jwt, "error_codes": []int{50013}})
	if e := entra.Classify(msalHTTPError(http.StatusBadRequest, string(body))); strings.Contains(e.Error(), "eyJ") || strings.Contains(e.Suberror, "eyJ") {
		t.Errorf("classified error quotes a token given as the OAuth error: %q (suberror %q)", e.Error(), e.Suberror)
	}
}
