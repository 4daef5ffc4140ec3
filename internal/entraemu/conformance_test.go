package entraemu_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	msalerrors "github.com/AzureAD/microsoft-authentication-library-for-go/apps/errors"
	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/public"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/agentidd/agentidd/internal/entraemu/emutest"
)

// verify checks a token's signature against the emulator's JWKS with go-jose (an independent JOSE library) and
// returns its claims.
func verify(t *testing.T, emu *emutest.Emulator, tok string) map[string]any {
	t.Helper()
	resp, err := emu.HTTPClient().Get(emu.Authority + "/discovery/v2.0/keys")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var jwks jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&jwks); err != nil {
		t.Fatal(err)
	}
	parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatalf("parsing token: %v", err)
	}
	if len(parsed.Headers) != 1 || parsed.Headers[0].KeyID == "" {
		t.Fatalf("token has no kid")
	}
	var claims map[string]any
	if err := parsed.Claims(jwks, &claims); err != nil {
		t.Fatalf("token does not verify against the JWKS: %v", err)
	}
	var std jwt.Claims
	if err := parsed.Claims(jwks, &std); err != nil {
		t.Fatal(err)
	}
	if err := std.ValidateWithLeeway(jwt.Expected{Issuer: emu.URL + "/" + emu.Tenant + "/v2.0", Time: time.Now()}, time.Minute); err != nil {
		t.Fatalf("standard claims: %v", err)
	}
	return claims
}

// wantClaims compares selected claims; a nil value means the claim must be absent.
func wantClaims(t *testing.T, what string, got map[string]any, want map[string]any) {
	t.Helper()
	for k, w := range want {
		g, ok := got[k]
		if w == nil {
			if ok {
				t.Errorf("%s: claim %s = %v, want absent", what, k, g)
			}
			continue
		}
		if fmt.Sprint(g) != fmt.Sprint(w) {
			t.Errorf("%s: claim %s = %v, want %v", what, k, g, w)
		}
	}
}

func newPublic(t *testing.T, emu *emutest.Emulator, opts ...public.Option) public.Client {
	t.Helper()
	opts = append([]public.Option{public.WithAuthority(emu.Authority), public.WithHTTPClient(emu.HTTPClient()), public.WithInstanceDiscovery(false)}, opts...)
	c, err := public.New(emutest.PublicClientID, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newBlueprint(t *testing.T, emu *emutest.Emulator, secret string) confidential.Client {
	t.Helper()
	cred, err := confidential.NewCredFromSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	c, err := confidential.New(emu.Authority, emutest.BlueprintAppID, cred,
		confidential.WithHTTPClient(emu.HTTPClient()), confidential.WithInstanceDiscovery(false))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newAgent builds the agent identity's client; its credential is the blueprint's exchange token for it.
func newAgent(t *testing.T, emu *emutest.Emulator, bp confidential.Client, agentID string, opts ...confidential.Option) confidential.Client {
	t.Helper()
	cred := confidential.NewCredFromAssertionCallback(func(ctx context.Context, o confidential.AssertionRequestOptions) (string, error) {
		r, err := bp.AcquireTokenByCredential(ctx, []string{emutest.TokenExchangeScope}, confidential.WithFMIPath(o.ClientID))
		if err != nil {
			return "", err
		}
		return r.AccessToken, nil
	})
	opts = append([]confidential.Option{confidential.WithHTTPClient(emu.HTTPClient()), confidential.WithInstanceDiscovery(false)}, opts...)
	c, err := confidential.New(emu.Authority, agentID, cred, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// signIn runs MSAL's device-code flow and completes the page like a person.
func signIn(t *testing.T, emu *emutest.Emulator, pub public.Client, upn, password string) (public.AuthResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dc, err := pub.AcquireTokenByDeviceCode(ctx, []string{emutest.BlueprintUserScope})
	if err != nil {
		t.Fatalf("device code: %v", err)
	}
	if !strings.HasPrefix(dc.Result.Message, "To sign in, use a web browser to open the page "+dc.Result.VerificationURL+" and enter the code "+dc.Result.UserCode) {
		t.Errorf("message = %q", dc.Result.Message)
	}
	if err := emu.CompleteDeviceCode(dc.Result.VerificationURL, dc.Result.UserCode, upn, password); err != nil {
		return public.AuthResult{}, err
	}
	return dc.AuthenticationResult(ctx)
}

// aadsts extracts the AADSTS code from an MSAL error the way the daemon does: from the JSON after "reply status code".
func aadsts(err error) int {
	if err == nil {
		return 0
	}
	var ce msalerrors.CallErr
	if !errors.As(err, &ce) {
		return -2
	}
	m := regexp.MustCompile(`"error_codes":\[(\d+)\]`).FindStringSubmatch(err.Error())
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func TestMSALDeviceCodeFMIPathOBO(t *testing.T) {
	emu := emutest.Start(t, emutest.Options{})
	ctx := context.Background()
	pub := newPublic(t, emu, public.WithClientCapabilities([]string{"cp1"}))

	user, err := signIn(t, emu, pub, emutest.DefaultUserUPN, emutest.DefaultUserPassword)
	if err != nil {
		t.Fatalf("device code sign-in: %v", err)
	}
	if user.Account.PreferredUsername != emutest.DefaultUserUPN || user.Account.HomeAccountID != emutest.DefaultUserOID+"."+emutest.DefaultTenantID {
		t.Errorf("account = %+v", user.Account)
	}
	uc := verify(t, emu, user.AccessToken)
	wantClaims(t, "user token", uc, map[string]any{
		"aud": emutest.BlueprintAppID, "oid": emutest.DefaultUserOID, "sub": emutest.DefaultUserOID, "tid": emutest.DefaultTenantID,
		"azp": emutest.PublicClientID, "azpacr": "0", "idtyp": "user", "scp": "access_as_user", "ver": "2.0",
		"preferred_username": emutest.DefaultUserUPN, "name": emutest.DefaultUserName, "xms_cc": "[cp1]",
	})
	idc := verify(t, emu, user.IDToken.RawToken)
	wantClaims(t, "id token", idc, map[string]any{"aud": emutest.PublicClientID, "oid": emutest.DefaultUserOID, "preferred_username": emutest.DefaultUserUPN})

	// Silent: served from MSAL's cache (the token lives an hour).
	silent, err := pub.AcquireTokenSilent(ctx, []string{emutest.BlueprintUserScope}, public.WithSilentAccount(user.Account))
	if err != nil || silent.AccessToken != user.AccessToken {
		t.Fatalf("silent = %v (same token: %v)", err, silent.AccessToken == user.AccessToken)
	}

	bp := newBlueprint(t, emu, emutest.BlueprintSecret)
	t1, err := bp.AcquireTokenByCredential(ctx, []string{emutest.TokenExchangeScope}, confidential.WithFMIPath(emutest.AgentAppID))
	if err != nil {
		t.Fatalf("fmi_path exchange: %v", err)
	}
	c1 := verify(t, emu, t1.AccessToken)
	wantClaims(t, "T1", c1, map[string]any{
		"aud": emutest.TokenExchangeAppID, "azp": emutest.BlueprintAppID, "azpacr": "1", "idtyp": "app",
		"sub":         "/eid1/c/pub/t/ECo8f45bHUyaby5LjQwakw/a/1MOyofble0qMnQ4fKjtMXQ/" + emutest.AgentAppID,
		"xms_act_fct": "1 9", "xms_sub_fct": "1 9", "xms_idrel": "7 26", "roles": nil, "scp": nil,
	})

	agent := newAgent(t, emu, bp, emutest.AgentAppID)
	obo, err := agent.AcquireTokenOnBehalfOf(ctx, user.AccessToken, []string{emutest.ResourceScopeRead})
	if err != nil {
		t.Fatalf("OBO: %v", err)
	}
	oc := verify(t, emu, obo.AccessToken)
	wantClaims(t, "OBO", oc, map[string]any{
		"aud": emutest.ResourceAppID, "oid": emutest.DefaultUserOID, "sub": emutest.DefaultUserOID, "azp": emutest.AgentAppID,
		"azpacr": "2", "idtyp": "user", "scp": "Files.Read", "xms_act_fct": "11", "xms_par_app_azp": emutest.BlueprintAppID,
		"tid": emutest.DefaultTenantID, "roles": nil, "xms_sub_fct": nil,
	})
	if oc["uti"] == "" || oc["uti"] == nil {
		t.Error("OBO token has no uti")
	}

	app, err := agent.AcquireTokenByCredential(ctx, []string{emutest.ResourceAppIDURI + "/.default"})
	if err != nil {
		t.Fatalf("agent app-only: %v", err)
	}
	ac := verify(t, emu, app.AccessToken)
	wantClaims(t, "app-only", ac, map[string]any{
		"aud": emutest.ResourceAppID, "oid": emutest.AgentAppID, "sub": emutest.AgentAppID, "azp": emutest.AgentAppID,
		"idtyp": "app", "roles": "[Files.Read.All]", "xms_act_fct": "11", "xms_sub_fct": "11", "xms_par_app_azp": emutest.BlueprintAppID, "scp": nil,
	})

	c, err := emu.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c.ByGrantType["device_code"] < 1 || c.ByGrantType["client_credentials"] < 2 || c.ByGrantType["urn:ietf:params:oauth:grant-type:jwt-bearer"] != 1 {
		t.Errorf("counters = %+v", c)
	}
}

// TestKeyRotation checks that tokens issued before and after a rotation both verify against the JWKS.
func TestKeyRotation(t *testing.T) {
	emu := emutest.Start(t, emutest.Options{})
	bp := newBlueprint(t, emu, emutest.BlueprintSecret)
	ctx := context.Background()
	before, err := bp.AcquireTokenByCredential(ctx, []string{emutest.TokenExchangeScope}, confidential.WithFMIPath(emutest.AgentAppID))
	if err != nil {
		t.Fatal(err)
	}
	kid := emu.RotateKeys()
	// A claims request bypasses MSAL's cache, so this is a fresh token signed with the new key.
	after, err := bp.AcquireTokenByCredential(ctx, []string{emutest.TokenExchangeScope}, confidential.WithFMIPath(emutest.AgentAppID),
		confidential.WithClaims(`{"access_token":{"xms_cc":{"values":["cp1"]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	verify(t, emu, before.AccessToken)
	ca := verify(t, emu, after.AccessToken)
	if ca["xms_cc"] == nil {
		t.Error("cp1 declared but xms_cc missing")
	}
	p, _ := jwt.ParseSigned(after.AccessToken, []jose.SignatureAlgorithm{jose.RS256})
	if p.Headers[0].KeyID != kid {
		t.Errorf("new token kid = %s, want %s", p.Headers[0].KeyID, kid)
	}
	// A second rotation pushes the first key out: tokens it signed no longer verify.
	emu.RotateKeys()
	resp, err := emu.HTTPClient().Get(emu.Authority + "/discovery/v2.0/keys")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var jwks jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&jwks); err != nil {
		t.Fatal(err)
	}
	if len(jwks.Keys) != 2 {
		t.Fatalf("JWKS has %d keys, want 2", len(jwks.Keys))
	}
	pb, _ := jwt.ParseSigned(before.AccessToken, []jose.SignatureAlgorithm{jose.RS256})
	var m map[string]any
	if err := pb.Claims(jwks, &m); err == nil {
		t.Error("a token signed by a retired key still verifies")
	}
}

// TestMSALSilentRefresh: with 2-minute tokens MSAL never serves user tokens from its cache, so silent calls use the
// refresh_token grant. MSAL Go fails an OBO outright when the result has under 5 minutes left ("access token is
// expired", storage/partitioned_storage.go), so the OBO half runs with 10-minute tokens and forces the agent's
// refresh with a claims request, which makes MSAL skip its cached access token.
func TestMSALSilentRefresh(t *testing.T) {
	emu := emutest.Start(t, emutest.Options{TokenLifetime: 2 * time.Minute})
	ctx := context.Background()
	pub := newPublic(t, emu)
	user, err := signIn(t, emu, pub, emutest.DefaultUserUPN, emutest.DefaultUserPassword)
	if err != nil {
		t.Fatal(err)
	}
	emu.ResetCounters()
	for i := range 2 {
		r, err := pub.AcquireTokenSilent(ctx, []string{emutest.BlueprintUserScope}, public.WithSilentAccount(user.Account))
		if err != nil {
			t.Fatalf("silent %d: %v", i, err)
		}
		if r.AccessToken == user.AccessToken {
			t.Fatalf("silent %d returned the cached token", i)
		}
		wantClaims(t, "refreshed user token", verify(t, emu, r.AccessToken), map[string]any{
			"aud": emutest.BlueprintAppID, "oid": emutest.DefaultUserOID, "scp": "access_as_user", "azp": emutest.PublicClientID,
		})
		user.AccessToken = r.AccessToken
	}
	emu.SetTokenLifetime(10 * time.Minute)
	agent := newAgent(t, emu, newBlueprint(t, emu, emutest.BlueprintSecret), emutest.AgentAppID)
	first, err := agent.AcquireTokenOnBehalfOf(ctx, user.AccessToken, []string{emutest.ResourceScopeRead})
	if err != nil {
		t.Fatalf("OBO: %v", err)
	}
	wantClaims(t, "OBO", verify(t, emu, first.AccessToken), map[string]any{"azp": emutest.AgentAppID, "oid": emutest.DefaultUserOID, "xms_cc": nil})
	second, err := agent.AcquireTokenOnBehalfOf(ctx, user.AccessToken, []string{emutest.ResourceScopeRead},
		confidential.WithClaims(`{"access_token":{"xms_cc":{"values":["cp1"]}}}`))
	if err != nil {
		t.Fatalf("OBO with claims: %v", err)
	}
	if second.AccessToken == first.AccessToken {
		t.Fatal("claims request served from cache")
	}
	wantClaims(t, "refreshed OBO", verify(t, emu, second.AccessToken), map[string]any{
		"azp": emutest.AgentAppID, "oid": emutest.DefaultUserOID, "scp": "Files.Read", "xms_act_fct": "11", "xms_cc": "[cp1]",
	})
	c, err := emu.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c.ByGrantType["refresh_token"] != 3 || c.ByClientID[emutest.AgentAppID] != 2 {
		t.Errorf("counters = %+v", c)
	}
}

// TestMSALInteractiveAuthCode runs MSAL's AcquireTokenInteractive (auth code + PKCE S256, loopback redirect,
// response_mode=form_post) with the browser replaced by emutest.CompleteAuthCode.
func TestMSALInteractiveAuthCode(t *testing.T) {
	emu := emutest.Start(t, emutest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pub := newPublic(t, emu)
	cases := []struct {
		name, password string
		wantErr        bool
	}{
		{"wrong password", "nope", true},
		{"signs in", emutest.DefaultUserPassword, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var browserErr error
			res, err := pub.AcquireTokenInteractive(ctx, []string{emutest.BlueprintUserScope}, public.WithOpenURL(func(u string) error {
				browserErr = emu.CompleteAuthCode(u, emutest.DefaultUserUPN, tc.password)
				return browserErr
			}))
			if tc.wantErr {
				if err == nil || browserErr == nil || !strings.Contains(browserErr.Error(), "AADSTS50126") {
					t.Fatalf("err = %v, browser = %v", err, browserErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("interactive: %v (browser: %v)", err, browserErr)
			}
			wantClaims(t, "auth code user token", verify(t, emu, res.AccessToken), map[string]any{
				"aud": emutest.BlueprintAppID, "oid": emutest.DefaultUserOID, "scp": "access_as_user", "azp": emutest.PublicClientID,
			})
			if res.Account.HomeAccountID != emutest.DefaultUserOID+"."+emutest.DefaultTenantID {
				t.Errorf("account = %+v", res.Account)
			}
		})
	}
}

// TestMSALDeviceCodeWhilePolling signs in while MSAL is already polling, so it sees authorization_pending and
// slow_down first, as it does when a person types the code.
func TestMSALDeviceCodeWhilePolling(t *testing.T) {
	emu := emutest.Start(t, emutest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pub := newPublic(t, emu)
	dc, err := pub.AcquireTokenByDeviceCode(ctx, []string{emutest.BlueprintUserScope})
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		r   public.AuthResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := dc.AuthenticationResult(ctx)
		done <- result{r, err}
	}()
	time.Sleep(1500 * time.Millisecond)
	if err := emu.CompleteDeviceCode(dc.Result.VerificationURL, dc.Result.UserCode, emutest.DefaultUserUPN, emutest.DefaultUserPassword); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil {
		t.Fatalf("device code after polling: %v", res.err)
	}
	c, err := emu.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c.ByGrantType["device_code"] < 3 {
		t.Errorf("MSAL polled %d times, want ≥ 3", c.ByGrantType["device_code"])
	}
	verify(t, emu, res.r.AccessToken)
}
