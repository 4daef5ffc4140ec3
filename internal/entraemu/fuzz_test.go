package entraemu

import (
	"net/http"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"net/url"
	"strings"
	"testing"
)

// checkErrorShape fails unless r is a success or an Entra-shaped 4xx error: never a 5xx, never a bare body.
func checkErrorShape(t *testing.T, r reply) {
	t.Helper()
	if r.status >= 500 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	if r.json == nil {
		t.Fatalf("status %d with a non-JSON body: %q", r.status, r.body)
	}
	if r.status == 200 {
		if r.str("access_token") == "" && r.str("device_code") == "" {
			t.Fatalf("200 without a token: %s", r.body)
		}
		return
	}
	if r.str("error") == "" || r.code() == 0 || !strings.HasPrefix(r.str("error_description"), "AADSTS") {
		t.Fatalf("status %d, error body not Entra-shaped: %s", r.status, r.body)
	}
}

func FuzzTokenForm(f *testing.F) {
	h := newHarness(f, Config{State: fixedState(f)})
	seeds := []url.Values{
		{"grant_type": {"client_credentials"}, "client_id": {tBlueprint}, "client_secret": {tSecret}, "scope": {tExchange}, "fmi_path": {tAgent}},
		{"grant_type": {"client_credentials"}, "client_id": {tBlueprint}, "client_secret": {tSecret}, "scope": {"api://files.contoso.example/.default"}, "claims": {`{"access_token":{"xms_cc":{"values":["cp1"]}}}`}},
		{"grant_type": {"refresh_token"}, "client_id": {tPublic}, "refresh_token": {"1.AEMU.x"}, "scope": {tUserScope}},
		{"grant_type": {"device_code"}, "client_id": {tPublic}, "device_code": {"x"}},
		{"grant_type": {grantJWTBearer}, "client_id": {tAgent}, "assertion": {"a.b.c"}, "requested_token_use": {"on_behalf_of"}, "client_assertion": {"a.b.c"}, "client_assertion_type": {assertionTypeJWT}, "scope": {tFilesRead}},
		{"grant_type": {"authorization_code"}, "client_id": {tPublic}, "code": {"c"}, "code_verifier": {"v"}, "redirect_uri": {"http://localhost"}},
		{"grant_type": {"client_credentials"}, "client_id": {tBlueprint}, "client_secret": {tSecret}, "scope": {"/ // .default api:// api://x/"}},
		{"grant_type": {"client_credentials"}, "client_id": {tBlueprint}, "claims": {`{"access_token":{"xms_cc":{"values":"cp1"}}}`}},
	}
	for _, s := range seeds {
		f.Add(s.Encode())
	}
	f.Add("grant_type=%zz&&&==")
	f.Add(strings.Repeat("a=b&", 100))
	f.Fuzz(func(t *testing.T, body string) {
		for _, ep := range []string{"token", "devicecode"} {
			r := h.do(http.MethodPost, "/"+tTenant+"/oauth2/v2.0/"+ep, "application/x-www-form-urlencoded", strings.NewReader(body), nil)
			checkErrorShape(t, r)
		}
	})
}

func FuzzClientAssertion(f *testing.F) {
	cert, key, certPEM := fixedCert(f)
	h := newHarness(f, Config{Directory: certDirectory(f, certPEM), State: fixedState(f)})
	t1 := h.exchange(tAgent)
	f.Add(t1)
	f.Add(t1[:len(t1)-3] + "AAA")
	f.Add(hs256(f, map[string]any{"aud": "x"}))
	f.Add(signAssertion(f, cert, key, "PS256", nil, map[string]any{"iss": certAppID, "sub": certAppID, "exp": "soon"}))
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("..")
	f.Add("e30.e30.e30")
	f.Fuzz(func(t *testing.T, assertion string) {
		for _, client := range []string{tAgent, certAppID, tBlueprint} {
			r := h.token(url.Values{"grant_type": {"client_credentials"}, "client_id": {client}, "client_assertion_type": {assertionTypeJWT},
				"client_assertion": {assertion}, "scope": {"api://files.contoso.example/.default"}})
			checkErrorShape(t, r)
			if r.status == 200 && (client != tAgent || !genuineExchangeToken(h, assertion)) {
				t.Fatalf("client %s accepted an assertion it should not: %.80q", client, assertion)
			}
			r = h.token(url.Values{"grant_type": {grantJWTBearer}, "client_id": {tAgent}, "client_assertion_type": {assertionTypeJWT},
				"client_assertion": {t1}, "assertion": {assertion}, "requested_token_use": {"on_behalf_of"}, "scope": {tFilesRead}})
			checkErrorShape(t, r)
			if r.status == 200 {
				t.Fatalf("OBO accepted a non-user assertion: %.80q", assertion)
			}
		}
	})
}

// genuineExchangeToken checks with go-jose, independently of the emulator's own parser, that tok is an exchange token
// the emulator signed for the demo agent.
func genuineExchangeToken(h *harness, tok string) bool {
	p, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return false
	}
	var c map[string]any
	if err := p.Claims(&h.emu.st.Keys[0].key.PublicKey, &c); err != nil {
		return false
	}
	sub, _ := c["sub"].(string)
	return c["aud"] == TokenExchangeAppID && c["azp"] == tBlueprint && strings.HasSuffix(sub, "/"+tAgent)
}
