package entraemu

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

func TestRefreshRotationAndReuse(t *testing.T) {
	h := newHarness(t, Config{})
	first := h.signIn()
	rt1 := first.str("refresh_token")
	refresh := func(rt string) reply {
		return h.token(url.Values{"grant_type": {"refresh_token"}, "client_id": {tPublic}, "refresh_token": {rt}, "scope": {tUserScope}})
	}
	second := refresh(rt1)
	if second.status != 200 || second.str("refresh_token") == "" || second.str("refresh_token") == rt1 {
		t.Fatalf("refresh: %d %s", second.status, second.body)
	}
	if got := refresh(rt1); got.status != 400 || got.str("error") != "invalid_grant" {
		t.Fatalf("reuse of a rotated token: %d %s", got.status, got.body)
	}
	// The reuse revoked the family: the newest token is dead too.
	if got := refresh(second.str("refresh_token")); got.code() != 50173 {
		t.Fatalf("after reuse: %d %s", got.status, got.body)
	}
	// A new sign-in starts a new family.
	if got := refresh(h.signIn().str("refresh_token")); got.status != 200 {
		t.Fatalf("new family: %d %s", got.status, got.body)
	}
	if got := refresh("garbage"); got.status != 400 || got.str("error") != "invalid_grant" || got.code() != 9002313 {
		t.Fatalf("garbage refresh token: %d %s", got.status, got.body)
	}
}

func TestOBORefreshAndResponseShape(t *testing.T) {
	h := newHarness(t, Config{TokenLifetime: 2 * time.Hour})
	user := h.signIn()
	for _, k := range []string{"access_token", "id_token", "client_info", "refresh_token", "expires_in", "ext_expires_in", "scope", "token_type", "refresh_in"} {
		if user.json[k] == nil {
			t.Errorf("user response lacks %s", k)
		}
	}
	if user.json["refresh_in"] != float64(3600) || user.json["expires_in"] != float64(7200) {
		t.Errorf("expires_in/refresh_in = %v/%v", user.json["expires_in"], user.json["refresh_in"])
	}
	ci, err := base64.RawURLEncoding.DecodeString(user.str("client_info"))
	if err != nil || string(ci) != `{"uid":"`+tUserOID+`","utid":"`+tTenant+`"}` {
		t.Errorf("client_info = %q (%v)", ci, err)
	}
	obo := h.obo(user.str("access_token"), tFilesRead)
	if obo.status != 200 || obo.str("refresh_token") == "" {
		t.Fatalf("OBO: %d %s", obo.status, obo.body)
	}
	r := h.token(url.Values{"grant_type": {"refresh_token"}, "client_id": {tAgent}, "client_assertion_type": {assertionTypeJWT},
		"client_assertion": {h.exchange(tAgent)}, "refresh_token": {obo.str("refresh_token")}, "scope": {tFilesRead}})
	if r.status != 200 {
		t.Fatalf("OBO refresh: %d %s", r.status, r.body)
	}
	claims := decodeClaims(t, r.str("access_token"))
	if claims["azp"] != tAgent || claims["xms_act_fct"] != "11" || claims["oid"] != tUserOID {
		t.Errorf("OBO refresh claims: %v", claims)
	}
	// The agent's refresh token needs the agent's credential.
	r = h.token(url.Values{"grant_type": {"refresh_token"}, "client_id": {tAgent}, "refresh_token": {r.str("refresh_token")}, "scope": {tFilesRead}})
	if r.status != 401 || r.str("error") != "invalid_client" {
		t.Fatalf("agent refresh without assertion: %d %s", r.status, r.body)
	}
}

func decodeClaims(t *testing.T, tok string) map[string]any {
	t.Helper()
	p, err := splitJWT(tok)
	if err != nil {
		t.Fatal(err)
	}
	return p.claims
}

func TestAuthCodePKCE(t *testing.T) {
	h := newHarness(t, Config{})
	verifier := "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk-and-more-entropy"
	sum := sha256.Sum256([]byte(verifier))
	challenge := base64.RawURLEncoding.EncodeToString(sum[:])
	redirect := "http://localhost:53111"
	authz := url.Values{"client_id": {tPublic}, "response_type": {"code"}, "redirect_uri": {redirect}, "scope": {tUserScope},
		"state": {"st8"}, "nonce": {"n0nce"}, "code_challenge": {challenge}, "code_challenge_method": {"S256"}}
	path := "/" + tTenant + "/oauth2/v2.0/authorize"
	getCode := func(t *testing.T) string {
		t.Helper()
		if r := h.do(http.MethodGet, path+"?"+authz.Encode(), "", nil, nil); r.status != 200 || !strings.Contains(string(r.body), `name="password"`) {
			t.Fatalf("authorize page: %d", r.status)
		}
		f := url.Values{"username": {tUPN}, "password": {tPassword}}
		for k, v := range authz {
			f[k] = v
		}
		r := h.form(path, f)
		loc, err := url.Parse(r.header.Get("Location"))
		if r.status != http.StatusFound || err != nil || loc.Query().Get("state") != "st8" || loc.Query().Get("code") == "" {
			t.Fatalf("authorize post: %d %q", r.status, r.header.Get("Location"))
		}
		return loc.Query().Get("code")
	}
	redeem := func(code, verifier, redirect string) reply {
		return h.token(url.Values{"grant_type": {"authorization_code"}, "client_id": {tPublic}, "code": {code},
			"redirect_uri": {redirect}, "code_verifier": {verifier}, "scope": {tUserScope}})
	}
	cases := []struct {
		name     string
		verifier string
		redirect string
		shift    string
		want     int
	}{
		{"wrong verifier", "not-the-verifier", redirect, "", 501481},
		{"wrong redirect", verifier, "http://localhost:53112", "", 70000},
		{"expired code", verifier, redirect, "11m", 70008},
		{"ok", verifier, redirect, "", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code := getCode(t)
			if tc.shift != "" {
				h.admin("clock/shift", `{"by":"`+tc.shift+`"}`)
				defer h.admin("clock/shift", `{"by":"-`+tc.shift+`"}`)
			}
			r := redeem(code, tc.verifier, tc.redirect)
			if tc.want == 0 {
				if r.status != 200 || decodeClaims(t, r.str("id_token"))["nonce"] != "n0nce" {
					t.Fatalf("redeem: %d %s", r.status, r.body)
				}
				if again := redeem(code, tc.verifier, tc.redirect); again.code() != 70000 {
					t.Fatalf("second redemption: %d %s", again.status, again.body)
				}
				return
			}
			if r.code() != tc.want {
				t.Fatalf("got %d %s, want AADSTS%d", r.status, r.body, tc.want)
			}
		})
	}
	t.Run("plain PKCE refused", func(t *testing.T) {
		q := url.Values{}
		for k, v := range authz {
			q[k] = v
		}
		q.Set("code_challenge_method", "plain")
		r := h.do(http.MethodGet, path+"?"+q.Encode(), "", nil, nil)
		if r.status != http.StatusFound || !strings.Contains(r.header.Get("Location"), "error=invalid_request") {
			t.Fatalf("plain: %d %q", r.status, r.header.Get("Location"))
		}
	})
	t.Run("unregistered redirect", func(t *testing.T) {
		q := url.Values{}
		for k, v := range authz {
			q[k] = v
		}
		q.Set("redirect_uri", "https://evil.example/cb")
		if r := h.do(http.MethodGet, path+"?"+q.Encode(), "", nil, nil); r.status != 400 {
			t.Fatalf("evil redirect: %d", r.status)
		}
	})
}

// testCert makes an RSA certificate and key for a certificate-credential client.
func testCert(t testing.TB) (*x509.Certificate, *rsa.PrivateKey, string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "daemon-app"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

const certAppID = "11111111-2222-4333-8444-555555555555"

func certDirectory(t testing.TB, certPEM string) *Directory {
	d := DefaultDirectory()
	d.Apps = append(d.Apps, &App{Name: "daemon-app", AppID: certAppID, Kind: KindConfidential, Certificates: []string{certPEM}})
	d.RoleAssignments = append(d.RoleAssignments, &RoleAssignment{Principal: certAppID, Resource: "e5f6a7b8-c9d0-4e1f-8a2b-3c4d5e6f7a8b", Role: "Files.Read.All"})
	if err := d.validate(); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestCertificateAssertionWithMSAL(t *testing.T) {
	cert, key, certPEM := testCert(t)
	emu, ts := tlsServer(t, Config{Directory: certDirectory(t, certPEM)})
	cred, err := confidential.NewCredFromCert([]*x509.Certificate{cert}, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := confidential.New(ts.URL+"/"+tTenant, certAppID, cred, confidential.WithHTTPClient(ts.Client()), confidential.WithInstanceDiscovery(false))
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.AcquireTokenByCredential(context.Background(), []string{"api://files.contoso.example/.default"})
	if err != nil {
		t.Fatalf("certificate client credentials: %v", err)
	}
	claims := decodeClaims(t, r.AccessToken)
	if claims["azpacr"] != "2" || claims["idtyp"] != "app" || claims["azp"] != certAppID {
		t.Errorf("claims: %v", claims)
	}
	_ = emu
}

// signAssertion builds a client assertion by hand so each rule can be broken on purpose.
func signAssertion(t testing.TB, cert *x509.Certificate, key *rsa.PrivateKey, alg jose.SignatureAlgorithm, hdr map[jose.HeaderKey]any, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	for k, v := range hdr {
		opts = opts.WithHeader(k, v)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestCertificateAssertionRules(t *testing.T) {
	cert, key, certPEM := testCert(t)
	otherCert, otherKey, _ := testCert(t)
	h := newHarness(t, Config{Directory: certDirectory(t, certPEM)})
	s256 := sha256.Sum256(cert.Raw)
	x5t256 := base64.RawURLEncoding.EncodeToString(s256[:])
	aud := testBase + "/" + tTenant + "/oauth2/v2.0/token"
	now := time.Now()
	good := func() map[string]any {
		return map[string]any{"aud": aud, "iss": certAppID, "sub": certAppID, "jti": newUUID(), "nbf": now.Unix(), "exp": now.Add(10 * time.Minute).Unix()}
	}
	with := func(k string, v any) map[string]any {
		c := good()
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	replayed := good()
	cases := []struct {
		name   string
		tok    string
		status int
		code   int
	}{
		{"PS256 x5t#S256", signAssertion(t, cert, key, jose.PS256, map[jose.HeaderKey]any{"x5t#S256": x5t256}, good()), 200, 0},
		{"RS256 x5t", signAssertion(t, cert, key, jose.RS256, map[jose.HeaderKey]any{"x5t": certThumbprint1(cert)}, good()), 200, 0},
		{"replay first use", signAssertion(t, cert, key, jose.PS256, map[jose.HeaderKey]any{"x5t#S256": x5t256}, replayed), 200, 0},
		{"replay second use", signAssertion(t, cert, key, jose.PS256, map[jose.HeaderKey]any{"x5t#S256": x5t256}, replayed), 401, 700023},
		{"unknown certificate", signAssertion(t, otherCert, otherKey, jose.PS256, map[jose.HeaderKey]any{"x5t#S256": x5t256}, good()), 401, 700027},
		{"no thumbprint", signAssertion(t, cert, key, jose.PS256, nil, good()), 401, 700027},
		{"wrong audience", signAssertion(t, cert, key, jose.PS256, map[jose.HeaderKey]any{"x5t#S256": x5t256}, with("aud", "https://elsewhere/token")), 401, 700212},
		{"wrong issuer", signAssertion(t, cert, key, jose.PS256, map[jose.HeaderKey]any{"x5t#S256": x5t256}, with("iss", tBlueprint)), 401, 700021},
		{"expired", signAssertion(t, cert, key, jose.PS256, map[jose.HeaderKey]any{"x5t#S256": x5t256}, with("exp", now.Add(-time.Hour).Unix())), 401, 700024},
		{"lives 11 minutes", signAssertion(t, cert, key, jose.PS256, map[jose.HeaderKey]any{"x5t#S256": x5t256}, with("exp", now.Add(11*time.Minute).Unix())), 401, 700024},
		{"no jti", signAssertion(t, cert, key, jose.PS256, map[jose.HeaderKey]any{"x5t#S256": x5t256}, with("jti", nil)), 401, 700023},
		{"HS256 refused", hs256(t, good()), 401, 5002738},
		{"not a JWT", "abc.def", 401, 50027},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := h.token(url.Values{"grant_type": {"client_credentials"}, "client_id": {certAppID}, "client_assertion_type": {assertionTypeJWT},
				"client_assertion": {tc.tok}, "scope": {"api://files.contoso.example/.default"}})
			if r.status != tc.status || r.code() != tc.code {
				t.Fatalf("got %d %s, want %d AADSTS%d", r.status, r.body, tc.status, tc.code)
			}
		})
	}
}

func certThumbprint1(c *x509.Certificate) string {
	s1, _ := certThumbprints(c)
	return s1[1]
}

func hs256(t testing.TB, claims map[string]any) string {
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte("0123456789abcdef0123456789abcdef")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestExchangeTokenRules: an agent identity's assertion must be its own parent's exchange token, made for it.
func TestExchangeTokenRules(t *testing.T) {
	d := DefaultDirectory()
	const bp2, agent2 = "22222222-2222-4222-8222-222222222222", "33333333-3333-4333-8333-333333333333"
	d.Apps = append(d.Apps,
		&App{Name: "bp2", AppID: bp2, Kind: KindBlueprint, Secrets: []string{"s2"}},
		&App{Name: "agent2", AppID: agent2, Kind: KindAgentIdentity, Parent: bp2})
	h := newHarness(t, Config{Directory: d})
	ownT1 := h.exchange(tAgent)
	r := h.token(url.Values{"grant_type": {"client_credentials"}, "client_id": {bp2}, "client_secret": {"s2"}, "scope": {tExchange}, "fmi_path": {agent2}})
	otherT1 := r.str("access_token")
	user := h.signIn().str("access_token")
	appOnly := func(client, assertion string) reply {
		return h.token(url.Values{"grant_type": {"client_credentials"}, "client_id": {client}, "client_assertion_type": {assertionTypeJWT},
			"client_assertion": {assertion}, "scope": {"api://files.contoso.example/.default"}})
	}
	cases := []struct {
		name, client, assertion string
		code                    int
	}{
		{"own exchange token", tAgent, ownT1, 0},
		{"another agent's exchange token", tAgent, otherT1, 70021},
		{"exchange token of another blueprint used by its agent", agent2, ownT1, 70021},
		{"a user token", tAgent, user, 700212},
		{"garbage", tAgent, "x.y.z", 700027},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := appOnly(tc.client, tc.assertion)
			if r.code() != tc.code || (tc.code == 0) != (r.status == 200) {
				t.Fatalf("got %d %s, want AADSTS%d", r.status, r.body, tc.code)
			}
		})
	}
	// T2: the agent's own exchange token carries the agent facets.
	r = appOnly(tAgent, ownT1)
	_ = r
	r = h.token(url.Values{"grant_type": {"client_credentials"}, "client_id": {tAgent}, "client_assertion_type": {assertionTypeJWT},
		"client_assertion": {ownT1}, "scope": {tExchange}})
	c := decodeClaims(t, r.str("access_token"))
	if c["aud"] != TokenExchangeAppID || c["xms_act_fct"] != "11 9 1" || c["xms_par_app_azp"] != tBlueprint {
		t.Errorf("T2 claims: %v", c)
	}
}

func TestMalformedRequests(t *testing.T) {
	h := newHarness(t, Config{})
	tokenPath := "/" + tTenant + "/oauth2/v2.0/token"
	formCT := "application/x-www-form-urlencoded"
	cases := []struct {
		name, path, ct, body string
		status               int
		err                  string
		code                 int
	}{
		{"json body", tokenPath, "application/json", `{"grant_type":"client_credentials"}`, 400, "invalid_request", 9002313},
		{"no grant_type", tokenPath, formCT, "client_id=" + tPublic, 400, "invalid_request", 900144},
		{"unknown grant_type", tokenPath, formCT, "grant_type=password&client_id=" + tPublic, 400, "unsupported_grant_type", 70003},
		{"no client_id", tokenPath, formCT, "grant_type=client_credentials", 400, "invalid_request", 900144},
		{"bad escape", tokenPath, formCT, "grant_type=%zz", 400, "invalid_request", 9002313},
		{"body too large", tokenPath, formCT, "a=" + strings.Repeat("x", maxForm), 400, "invalid_request", 9002313},
		{"claims not JSON", tokenPath, formCT, "grant_type=client_credentials&client_id=" + tBlueprint + "&client_secret=" + tSecret + "&scope=api://files.contoso.example/.default&claims=%7B", 400, "invalid_request", 9002313},
		{"scope missing", tokenPath, formCT, "grant_type=client_credentials&client_id=" + tBlueprint + "&client_secret=" + tSecret, 400, "invalid_scope", 70011},
		{"scope of two resources", tokenPath, formCT, "grant_type=client_credentials&client_id=" + tBlueprint + "&client_secret=" + tSecret + "&scope=api://files.contoso.example/.default+" + url.QueryEscape(tExchange), 400, "invalid_request", 28000},
		{"unknown tenant", "/fabrikam/oauth2/v2.0/token", formCT, "grant_type=client_credentials", 400, "invalid_request", 90002},
		{"public client sends a secret", tokenPath, formCT, "grant_type=refresh_token&refresh_token=x&client_id=" + tPublic + "&client_secret=s", 401, "invalid_client", 700025},
		{"public client, client_credentials", tokenPath, formCT, "grant_type=client_credentials&client_id=" + tPublic + "&scope=x/.default", 400, "unauthorized_client", 70000},
		{"OBO without requested_token_use", tokenPath, formCT, "grant_type=" + url.QueryEscape(grantJWTBearer) + "&client_id=" + tAgent + "&assertion=x", 400, "invalid_request", 9002313},
		{"devicecode for a confidential client", "/" + tTenant + "/oauth2/v2.0/devicecode", formCT, "client_id=" + tBlueprint + "&scope=" + url.QueryEscape(tUserScope), 400, "unauthorized_client", 70000},
		{"device_code unknown", tokenPath, formCT, "grant_type=device_code&client_id=" + tPublic + "&device_code=nope", 400, "bad_verification_code", 70000},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do(http.MethodPost, tc.path, tc.ct, strings.NewReader(tc.body), map[string]string{"client-request-id": "0b3a2c9e-1111-4222-8333-444455556666"})
			if r.status != tc.status || r.str("error") != tc.err || r.code() != tc.code {
				t.Fatalf("got %d %s, want %d %s AADSTS%d", r.status, r.body, tc.status, tc.err, tc.code)
			}
			desc := r.str("error_description")
			if !strings.HasPrefix(desc, "AADSTS") || !strings.Contains(desc, "\r\nTrace ID: ") || !strings.Contains(desc, "\r\nCorrelation ID: 0b3a2c9e-1111-4222-8333-444455556666\r\nTimestamp: ") {
				t.Errorf("error_description shape: %q", desc)
			}
			for _, k := range []string{"timestamp", "trace_id", "correlation_id", "error_uri"} {
				if r.str(k) == "" {
					t.Errorf("missing %s", k)
				}
			}
		})
	}
}

func TestDeviceCodeStates(t *testing.T) {
	h := newHarness(t, Config{})
	start := func() reply {
		return h.form("/"+tTenant+"/oauth2/v2.0/devicecode", url.Values{"client_id": {tPublic}, "scope": {tUserScope}})
	}
	poll := func(dc reply) reply {
		return h.token(url.Values{"grant_type": {"device_code"}, "client_id": {tPublic}, "device_code": {dc.str("device_code")}})
	}
	page := func(f url.Values) reply { return h.form("/"+tTenant+"/oauth2/v2.0/deviceauth", f) }

	dc := start()
	if dc.json["expires_in"] != float64(900) || !strings.HasSuffix(dc.str("verification_uri"), "/"+tTenant+"/oauth2/v2.0/deviceauth") {
		t.Fatalf("devicecode reply: %s", dc.body)
	}
	if r := poll(dc); r.str("error") != "authorization_pending" {
		t.Fatalf("first poll: %s", r.body)
	}
	if r := poll(dc); r.str("error") != "slow_down" {
		t.Fatalf("immediate second poll: %s", r.body)
	}
	if r := page(url.Values{"user_code": {"BBBBBBBBB"}, "username": {tUPN}, "password": {tPassword}}); r.status != 400 || !strings.Contains(string(r.body), "recognised") {
		t.Fatalf("unknown code page: %d", r.status)
	}
	if r := page(url.Values{"user_code": {dc.str("user_code")}, "username": {tUPN}, "password": {"nope"}}); r.status != 400 || !strings.Contains(string(r.body), "AADSTS50126") {
		t.Fatalf("bad password page: %d", r.status)
	}
	if r := page(url.Values{"user_code": {strings.ToLower(dc.str("user_code"))}, "action": {"deny"}}); r.status != 200 {
		t.Fatalf("deny: %d", r.status)
	}
	if r := poll(dc); r.status != 400 || r.str("error") != "authorization_declined" {
		t.Fatalf("after deny: %s", r.body)
	}
	dc = start()
	h.admin("clock/shift", `{"by":"16m"}`)
	if r := poll(dc); r.str("error") != "expired_token" || r.code() != 70019 {
		t.Fatalf("after expiry: %s", r.body)
	}
	h.admin("clock/shift", `{"by":"-16m"}`)
	dc = start()
	h.admin("users/enabled", `{"upn":"`+tUPN+`","enabled":false}`)
	if r := page(url.Values{"user_code": {dc.str("user_code")}, "username": {tUPN}, "password": {tPassword}}); r.status != 403 || !strings.Contains(string(r.body), "AADSTS50057") {
		t.Fatalf("disabled user page: %d %s", r.status, r.body)
	}
	if r := h.do(http.MethodGet, "/"+tTenant+"/oauth2/v2.0/deviceauth", "", nil, nil); r.status != 200 || !strings.Contains(string(r.body), `name="user_code"`) {
		t.Fatalf("GET page: %d", r.status)
	}
}

func TestDiscoveryDocuments(t *testing.T) {
	h := newHarness(t, Config{})
	oidc := h.do(http.MethodGet, "/contoso/v2.0/.well-known/openid-configuration", "", nil, nil)
	for k, want := range map[string]string{
		"issuer":         testBase + "/" + tTenant + "/v2.0",
		"token_endpoint": testBase + "/contoso/oauth2/v2.0/token", "authorization_endpoint": testBase + "/contoso/oauth2/v2.0/authorize",
		"device_authorization_endpoint": testBase + "/contoso/oauth2/v2.0/devicecode", "jwks_uri": testBase + "/contoso/discovery/v2.0/keys",
	} {
		if oidc.str(k) != want {
			t.Errorf("%s = %q, want %q", k, oidc.str(k), want)
		}
	}
	inst := h.do(http.MethodGet, "/common/discovery/instance?api-version=1.1&authorization_endpoint=x", "", nil, nil)
	if inst.status != 200 || !strings.HasSuffix(inst.str("tenant_discovery_endpoint"), "/openid-configuration") {
		t.Errorf("instance discovery: %s", inst.body)
	}
	keys := h.do(http.MethodGet, "/"+tTenant+"/discovery/v2.0/keys", "", nil, nil)
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(keys.body, &set); err != nil || len(set.Keys) != 1 || set.Keys[0].KeyID == "" {
		t.Errorf("jwks: %s (%v)", keys.body, err)
	}
}

func TestRefreshPruning(t *testing.T) {
	h := newHarness(t, Config{})
	now := time.Now()
	old := now.Add(-48 * time.Hour)
	h.emu.st.Refresh["used-old"] = &refreshRecord{Family: "f1", Used: true, LastUsed: old}
	h.emu.st.Refresh["live-old"] = &refreshRecord{Family: "f1", LastUsed: old}
	h.emu.st.Refresh["inactive"] = &refreshRecord{Family: "f2", LastUsed: now.Add(-refreshInactivity - time.Hour)}
	h.emu.st.Refresh["used-new"] = &refreshRecord{Family: "f3", Used: true, LastUsed: now}
	h.emu.st.Refresh["revoked"] = &refreshRecord{Family: "f4", LastUsed: now}
	h.emu.st.RevokedFamilies["f4"] = true
	h.emu.pruneRefresh(now)
	for _, k := range []string{"used-old", "inactive", "revoked"} {
		if h.emu.st.Refresh[k] != nil {
			t.Errorf("%s kept", k)
		}
	}
	for _, k := range []string{"live-old", "used-new"} {
		if h.emu.st.Refresh[k] == nil {
			t.Errorf("%s pruned", k)
		}
	}
}

// TestDuplicateParameters: Entra refuses a repeated form parameter outright (AADSTS9000411, seen for a repeated
// `scope` at the token endpoint in MicrosoftDocs/azure-dev-docs#934) instead of picking one of the values.
func TestDuplicateParameters(t *testing.T) {
	h := newHarness(t, Config{})
	formCT := "application/x-www-form-urlencoded"
	cases := []struct{ name, path, body string }{
		{"token, scope twice", "/" + tTenant + "/oauth2/v2.0/token", "grant_type=client_credentials&client_id=" + tBlueprint + "&client_secret=" + tSecret +
			"&scope=api%3A%2F%2Ffiles.contoso.example%2F.default&scope=api%3A%2F%2Ffiles.contoso.example%2F.default"},
		{"token, client_id twice", "/" + tTenant + "/oauth2/v2.0/token", "grant_type=client_credentials&client_id=" + tBlueprint + "&client_id=" + tPublic +
			"&client_secret=" + tSecret + "&scope=api%3A%2F%2Ffiles.contoso.example%2F.default"},
		{"devicecode, scope twice", "/" + tTenant + "/oauth2/v2.0/devicecode", "client_id=" + tPublic + "&scope=" + url.QueryEscape(tUserScope) + "&scope=" + url.QueryEscape(tUserScope)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do(http.MethodPost, tc.path, formCT, strings.NewReader(tc.body), nil)
			if r.status != 400 || r.str("error") != "invalid_request" || r.code() != 9000411 {
				t.Fatalf("got %d %s, want 400 invalid_request AADSTS9000411", r.status, r.body)
			}
			if !strings.Contains(r.str("error_description"), "is duplicated") {
				t.Errorf("error_description: %q", r.str("error_description"))
			}
		})
	}
}

// TestDeviceCodeErrorNames: the device-code poll answers with the error names Entra documents for it
// (v2-oauth2-device-code "Expected errors"), not the RFC 8628 access_denied or a generic invalid_grant.
func TestDeviceCodeErrorNames(t *testing.T) {
	h := newHarness(t, Config{})
	dc := h.form("/"+tTenant+"/oauth2/v2.0/devicecode", url.Values{"client_id": {tPublic}, "scope": {tUserScope}})
	if r := h.form("/"+tTenant+"/oauth2/v2.0/deviceauth", url.Values{"user_code": {dc.str("user_code")}, "action": {"deny"}}); r.status != 200 {
		t.Fatalf("deny: %d", r.status)
	}
	poll := func(code string) reply {
		return h.token(url.Values{"grant_type": {"device_code"}, "client_id": {tPublic}, "device_code": {code}})
	}
	if r := poll(dc.str("device_code")); r.status != 400 || r.str("error") != "authorization_declined" {
		t.Errorf("declined: %d %s", r.status, r.body)
	}
	if r := poll("DAQABAAEAAAEMUnot-a-code"); r.status != 400 || r.str("error") != "bad_verification_code" {
		t.Errorf("unknown code: %d %s", r.status, r.body)
	}
}

// TestOIDCScopesSelectTokens: Entra issues an id_token only when `openid` was requested and a refresh token only
// when `offline_access` was (v2-oauth2-device-code and v2-oauth2-on-behalf-of-flow response tables). MSAL always
// asks for both, so only a raw client can tell; an emulator handing them out regardless would hide a missing scope.
func TestOIDCScopesSelectTokens(t *testing.T) {
	h := newHarness(t, Config{})
	deviceFlow := func(scope string) reply {
		t.Helper()
		dc := h.form("/"+tTenant+"/oauth2/v2.0/devicecode", url.Values{"client_id": {tPublic}, "scope": {scope}})
		if r := h.form("/"+tTenant+"/oauth2/v2.0/deviceauth", url.Values{"user_code": {dc.str("user_code")}, "username": {tUPN}, "password": {tPassword}}); r.status != 200 {
			t.Fatalf("deviceauth: %d", r.status)
		}
		r := h.token(url.Values{"grant_type": {"device_code"}, "client_id": {tPublic}, "device_code": {dc.str("device_code")}, "client_info": {"1"}})
		if r.status != 200 {
			t.Fatalf("device code token: %d %s", r.status, r.body)
		}
		return r
	}
	const userScope = "api://a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d/access_as_user"
	bare := deviceFlow(userScope)
	if _, ok := bare.json["id_token"]; ok {
		t.Error("id_token issued without openid")
	}
	if _, ok := bare.json["refresh_token"]; ok {
		t.Error("refresh_token issued without offline_access")
	}
	onlyOpenID := deviceFlow(userScope + " openid profile")
	if onlyOpenID.str("id_token") == "" {
		t.Error("no id_token although openid was requested")
	}
	if _, ok := onlyOpenID.json["refresh_token"]; ok {
		t.Error("refresh_token issued without offline_access")
	}
	full := deviceFlow(tUserScope)
	if full.str("id_token") == "" || full.str("refresh_token") == "" {
		t.Errorf("MSAL's scopes: %s", full.body)
	}

	obo := h.obo(full.str("access_token"), "api://files.contoso.example/Files.Read")
	if obo.status != 200 {
		t.Fatalf("obo: %d %s", obo.status, obo.body)
	}
	if _, ok := obo.json["refresh_token"]; ok {
		t.Error("OBO refresh_token issued without offline_access")
	}
	if obo = h.obo(full.str("access_token"), tFilesRead); obo.str("refresh_token") == "" {
		t.Errorf("OBO with offline_access: %s", obo.body)
	}
}

// TestAuthorizeDuplicateParameter: the authorization endpoint refuses a repeated parameter too (AADSTS9000411 for a
// repeated login_hint, AzureAD/microsoft-authentication-library-for-android#688), and says so before using any
// redirect_uri, since which of two values is meant cannot be known.
func TestAuthorizeDuplicateParameter(t *testing.T) {
	h := newHarness(t, Config{})
	q := url.Values{"client_id": {tPublic}, "response_type": {"code"}, "redirect_uri": {"http://localhost:5000"},
		"scope": {tUserScope}, "code_challenge": {"abc"}, "code_challenge_method": {"S256"}, "login_hint": {tUPN, "eve@contoso.example"}}
	r := h.do(http.MethodGet, "/"+tTenant+"/oauth2/v2.0/authorize?"+q.Encode(), "", nil, nil)
	if r.status != 400 || !strings.Contains(string(r.body), "AADSTS9000411") || !strings.Contains(string(r.body), "login_hint") {
		t.Fatalf("got %d %s", r.status, r.body)
	}
}
