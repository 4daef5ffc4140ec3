package entraemu

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

const (
	grantJWTBearer     = "urn:ietf:params:oauth:grant-type:jwt-bearer"
	assertionTypeJWT   = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	maxAssertionLife   = 10 * time.Minute
	clockSkew          = 5 * time.Minute
	deviceCodeLifetime = 15 * time.Minute
)

// oidcScopes are added by MSAL to every request; they select the id_token and refresh token, not a resource.
var oidcScopes = []string{"openid", "offline_access", "profile", "email"}

func (e *Emulator) handleToken(w http.ResponseWriter, r *http.Request) {
	tenant, f, ok := e.tenantForm(w, r)
	if !ok {
		return
	}
	res, oe := e.token(tenant, f)
	if oe != nil {
		e.writeError(w, r, oe)
		return
	}
	e.log.Info("token issued", "grant_type", f.Get("grant_type"), "client_id", f.Get("client_id"))
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, 200, res)
}

// tenantForm checks the tenant and parses the form of a token-endpoint style POST, answering the request itself when
// either fails.
func (e *Emulator) tenantForm(w http.ResponseWriter, r *http.Request) (string, url.Values, bool) {
	tenant, ok := e.checkTenant(w, r)
	if !ok {
		return "", nil, false
	}
	f, oe := parseForm(r)
	if oe != nil {
		e.writeError(w, r, oe)
		return "", nil, false
	}
	return tenant, f, true
}

func parseForm(r *http.Request) (url.Values, *oauthError) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, errInvalidRequest("The request body must be application/x-www-form-urlencoded.")
	}
	r.Body = http.MaxBytesReader(nil, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		return nil, errInvalidRequest("The request body could not be parsed.")
	}
	if name := duplicated(r.PostForm); name != "" {
		return nil, errDuplicateParam(name)
	}
	return r.PostForm, nil
}

// duplicated names a parameter sent more than once, or returns "". Entra refuses such a request rather than choosing
// one of the values; choosing would let a request mean something else here than there.
func duplicated(v url.Values) string {
	for _, k := range slices.Sorted(maps.Keys(v)) {
		if len(v[k]) > 1 {
			return k
		}
	}
	return ""
}

// request is one token request after the checks every grant shares.
type request struct {
	tenant string
	f      url.Values
	client *App
	now    time.Time
	cp1    bool
	auth   clientAuth
}

type clientAuth struct {
	acr string // azpacr: 0 public, 1 secret, 2 certificate or assertion
}

// token runs one token request under the lock; it never panics on bad input and returns an Entra error instead.
func (e *Emulator) token(tenant string, f url.Values) (map[string]any, *oauthError) {
	e.mu.Lock()
	defer e.mu.Unlock()
	grant := f.Get("grant_type")
	if grant == "" {
		return nil, errMissingParam("grant_type")
	}
	clientID := f.Get("client_id")
	if clientID == "" {
		return nil, errMissingParam("client_id")
	}
	client := e.dir.app(clientID)
	if client == nil {
		return nil, errUnknownApp(clientID)
	}
	if client.Disabled {
		return nil, errAppDisabled(clientID)
	}
	req := &request{tenant: tenant, f: f, client: client, now: e.nowLocked()}
	if c := f.Get("claims"); c != "" {
		cp1, err := parseClaims(c)
		if err != nil {
			return nil, errInvalidRequest("The claims parameter is not valid JSON.")
		}
		req.cp1 = cp1
	}
	switch grant {
	case "device_code", "urn:ietf:params:oauth:grant-type:device_code":
		return e.grantDeviceCode(req)
	case "refresh_token":
		return e.grantRefresh(req)
	case "client_credentials":
		return e.grantClientCredentials(req)
	case grantJWTBearer:
		return e.grantOBO(req)
	case "authorization_code":
		return e.grantAuthCode(req)
	default:
		return nil, newErr(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type '%s'.", truncate(grant, 64))
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// parseClaims checks the claims request and reports whether the client declared capability cp1.
func parseClaims(s string) (bool, error) {
	var c struct {
		AccessToken struct {
			XmsCC struct {
				Values []string `json:"values"`
			} `json:"xms_cc"`
		} `json:"access_token"`
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &obj); err != nil {
		return false, err
	}
	if err := json.Unmarshal([]byte(s), &c); err != nil {
		// A well-formed claims object with unexpected value types: ignore what we don't understand, like Entra.
		return false, nil
	}
	return slices.Contains(c.AccessToken.XmsCC.Values, "cp1"), nil
}

// authenticate checks the client's credential for its kind.
func (e *Emulator) authenticate(req *request) *oauthError {
	f, c := req.f, req.client
	secret, assertion := f.Get("client_secret"), f.Get("client_assertion")
	switch c.Kind {
	case KindPublic:
		if secret != "" || assertion != "" {
			return newErr(401, "invalid_client", 700025, "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.")
		}
		req.auth.acr = "0"
		return nil
	case KindAgentIdentity:
		if secret != "" {
			return newErr(401, "invalid_client", 7000215, "An agent identity holds no secret; authenticate with the blueprint's exchange token.")
		}
		if assertion == "" || f.Get("client_assertion_type") != assertionTypeJWT {
			return newErr(401, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
		}
		req.auth.acr = "2"
		return e.checkExchangeToken(req, assertion)
	case KindResource:
		return newErr(400, "unauthorized_client", 700016, "Application '%s' exposes an API and cannot request tokens in the emulator.", c.AppID)
	}
	switch {
	case secret != "":
		for _, s := range c.Secrets {
			if subtle.ConstantTimeCompare([]byte(s), []byte(secret)) == 1 {
				req.auth.acr = "1"
				return nil
			}
		}
		return errInvalidSecret(c.AppID)
	case assertion != "":
		if f.Get("client_assertion_type") != assertionTypeJWT {
			return newErr(401, "invalid_client", 700024, "Client assertion type is not supported.")
		}
		req.auth.acr = "2"
		return e.checkCertAssertion(req, assertion)
	}
	return newErr(401, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
}

// verifyOwn checks a token the emulator itself signed (kid in the current JWKS).
func (e *Emulator) verifyOwn(tok string) (*jwtParts, string) {
	j, err := splitJWT(tok)
	if err != nil {
		return nil, "The token is not a well-formed JWT."
	}
	if j.headerS["alg"] != "RS256" {
		return nil, "The token is not signed with RS256."
	}
	for _, k := range e.st.Keys {
		if k.Kid == j.headerS["kid"] {
			if j.verifyRSA(&k.key.PublicKey) != nil {
				return nil, "The signature does not verify."
			}
			if j.str("iss") != e.Issuer() {
				return nil, "The issuer is not this tenant."
			}
			return j, ""
		}
	}
	return nil, "The key was not found."
}

// checkExchangeToken validates an agent identity's client assertion: a blueprint exchange token (T1) made for this
// agent identity by its parent blueprint.
func (e *Emulator) checkExchangeToken(req *request, tok string) *oauthError {
	j, reason := e.verifyOwn(tok)
	if j == nil {
		return newErr(401, "invalid_client", 700027, "Client assertion failed signature validation. %s", reason)
	}
	if !strings.EqualFold(j.str("aud"), TokenExchangeAppID) {
		return newErr(401, "invalid_client", 700212, "No matching federated identity record found for presented assertion audience '%s'.", truncate(j.str("aud"), 80))
	}
	exp, ok := j.num("exp")
	if !ok || req.now.After(time.Unix(exp, 0).Add(clockSkew)) {
		return newErr(401, "invalid_client", 700024, "Client assertion is not within its valid time range.")
	}
	sub := j.str("sub")
	fmi := sub[strings.LastIndex(sub, "/")+1:]
	if !strings.HasPrefix(sub, "/eid1/") || !strings.EqualFold(fmi, req.client.AppID) || !strings.EqualFold(j.str("azp"), req.client.Parent) {
		return newErr(400, "invalid_request", 70021, "No matching federated identity record found for presented assertion. The exchange token was not issued by the parent blueprint of agent identity '%s' for it.", req.client.AppID)
	}
	if bp := e.dir.app(req.client.Parent); bp == nil || bp.Disabled {
		return errAppDisabled(req.client.Parent)
	}
	return nil
}

// checkCertAssertion validates a certificate client assertion (private_key_jwt).
func (e *Emulator) checkCertAssertion(req *request, tok string) *oauthError {
	j, err := splitJWT(tok)
	if err != nil {
		return newErr(401, "invalid_client", 50027, "JWT token is invalid or malformed.")
	}
	alg := j.headerS["alg"]
	if alg != "RS256" && alg != "PS256" {
		return newErr(401, "invalid_client", 5002738, "Invalid JWT token. '%s' is not a supported signature algorithm.", truncate(alg, 16))
	}
	x5t, x5t256 := j.headerS["x5t"], j.headerS["x5t#S256"]
	var verified bool
	for _, pemCert := range req.client.Certificates {
		cert, err := parseCertPEM(pemCert)
		if err != nil {
			continue
		}
		s1, s256 := certThumbprints(cert)
		if (x5t == "" || !slices.Contains(s1, x5t)) && (x5t256 == "" || !slices.Contains(s256, x5t256)) {
			continue
		}
		pub, ok := rsaPublic(cert)
		if ok && j.verifyRSA(pub) == nil {
			verified = true
			break
		}
	}
	if !verified {
		return newErr(401, "invalid_client", 700027, "Client assertion failed signature validation.")
	}
	if j.str("iss") != req.client.AppID || j.str("sub") != req.client.AppID {
		return newErr(401, "invalid_client", 700021, "Client assertion application identifier doesn't match 'client_id' parameter.")
	}
	aud := j.str("aud")
	if aud != e.tokenEndpoint(req.tenant) && aud != e.tokenEndpoint(e.dir.Tenant.ID) && aud != e.tokenEndpoint(e.dir.Tenant.Name) && aud != e.Issuer() {
		return newErr(401, "invalid_client", 700212, "Client assertion audience claim does not match the token endpoint.")
	}
	exp, okE := j.num("exp")
	start, okS := j.num("nbf")
	if !okS {
		start, okS = j.num("iat")
	}
	if !okE || !okS || time.Unix(exp, 0).Sub(time.Unix(start, 0)) > maxAssertionLife ||
		req.now.After(time.Unix(exp, 0).Add(clockSkew)) || req.now.Add(clockSkew).Before(time.Unix(start, 0)) {
		return newErr(401, "invalid_client", 700024, "Client assertion is not within its valid time range.")
	}
	jti := j.str("jti")
	if jti == "" {
		return newErr(401, "invalid_client", 700023, "Client assertion must contain a 'jti' claim.")
	}
	key := req.client.AppID + "|" + jti
	if _, seen := e.st.UsedJTIs[key]; seen {
		return newErr(401, "invalid_client", 700023, "Client assertion has already been used (jti replay).")
	}
	for k, until := range e.st.UsedJTIs {
		if req.now.After(until) {
			delete(e.st.UsedJTIs, k)
		}
	}
	e.st.UsedJTIs[key] = time.Unix(exp, 0).Add(clockSkew)
	return nil
}

// scopeSet is a parsed scope parameter: OIDC scopes stripped, everything else on one resource.
type scopeSet struct {
	res       *App
	names     []string // scope names as the resource declares them; empty with def
	def       bool     // <resource>/.default
	requested []string // as sent, minus OIDC scopes
	openid    bool     // an id_token is wanted
	offline   bool     // a refresh token is wanted
}

func (e *Emulator) parseScope(raw string) (*scopeSet, *oauthError) {
	ss := &scopeSet{}
	for _, s := range strings.Fields(raw) {
		if slices.Contains(oidcScopes, strings.ToLower(s)) {
			switch strings.ToLower(s) {
			case "openid":
				ss.openid = true
			case "offline_access":
				ss.offline = true
			}
			continue
		}
		i := strings.LastIndex(s, "/")
		if i <= 0 || i == len(s)-1 {
			return nil, errInvalidScope(truncate(s, 200))
		}
		res := e.dir.resource(s[:i])
		if res == nil {
			return nil, newErr(400, "invalid_resource", 500011, "The resource principal named %s was not found in the tenant named %s.", truncate(s[:i], 200), e.dir.Tenant.Name)
		}
		if ss.res != nil && ss.res != res {
			return nil, newErr(400, "invalid_request", 28000, "Provided value for the input parameter scope is not valid because it contains more than one resource. Scope %s is not valid.", truncate(raw, 200))
		}
		ss.res = res
		ss.requested = append(ss.requested, s)
		name := s[i+1:]
		if name == ".default" {
			ss.def = true
			continue
		}
		idx := slices.IndexFunc(res.Scopes, func(x string) bool { return strings.EqualFold(x, name) })
		if idx < 0 {
			return nil, errInvalidScope(truncate(s, 200))
		}
		ss.names = append(ss.names, res.Scopes[idx])
	}
	if ss.res == nil {
		return nil, errInvalidScope(truncate(raw, 200))
	}
	if ss.def && len(ss.names) > 0 {
		return nil, errInvalidScope(truncate(raw, 200))
	}
	return ss, nil
}

// delegated resolves the delegated scopes client may use: all consented ones for .default, else the requested ones,
// each of which must be consented.
func (e *Emulator) delegated(client *App, ss *scopeSet) ([]string, *oauthError) {
	if ss.res == tokenExchangeApp {
		return nil, errInvalidScope(tokenExchangeURI + "/.default")
	}
	granted := e.dir.consented(client.AppID, ss.res.AppID)
	if ss.def {
		if len(granted) == 0 {
			return nil, errConsent(client.AppID, ss.res.AppID)
		}
		return granted, nil
	}
	for _, n := range ss.names {
		if !containsFold(granted, n) {
			return nil, errConsent(client.AppID, ss.res.AppID)
		}
	}
	return ss.names, nil
}

// checkUser applies the user's account state. Interactive sign-ins reset session revocation and CAE marks.
func (e *Emulator) checkUser(u *User, authTime time.Time, interactive bool) *oauthError {
	if u == nil {
		return newErr(400, "invalid_grant", 50034, "The user account does not exist in the %s directory.", e.dir.Tenant.Name)
	}
	if u.Disabled {
		return errUserDisabled()
	}
	if interactive {
		return nil
	}
	if t, ok := e.st.UserRevokedAt[u.OID]; ok && !authTime.After(t) {
		return errRevoked()
	}
	if t, ok := e.st.ReauthSince[u.OID]; ok && !authTime.After(t) {
		return errReauth(fmt.Sprintf(`{"access_token":{"nbf":{"essential":true,"value":"%d"}}}`, t.Unix()))
	}
	switch u.MFA {
	case "required":
		return errMFA(`{"access_token":{"capolids":{"essential":true,"values":["` + newUUID() + `"]}}}`)
	case "enrollment":
		return errMFAEnrollment(`{"access_token":{"capolids":{"essential":true,"values":["` + newUUID() + `"]}}}`)
	}
	return nil
}

func (e *Emulator) baseClaims(aud string, now time.Time) map[string]any {
	return map[string]any{
		"aud": aud, "iss": e.Issuer(), "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(e.st.Lifetime).Unix(),
		"tid": e.dir.Tenant.ID, "ver": "2.0", "uti": randString(16), "aio": randString(32), "rh": "1.AEMU" + randString(24),
	}
}

func (e *Emulator) sign(claims map[string]any) (string, *oauthError) {
	t, err := e.st.Keys[0].sign(claims)
	if err != nil {
		e.log.Error("signing failed", "err", err)
		return "", newErr(500, "server_error", 90033, "A transient error has occurred. Please try again.")
	}
	return t, nil
}

// tokenResponse is the shape common to every success.
func (e *Emulator) tokenResponse(at string, scopes []string) map[string]any {
	secs := int64(e.st.Lifetime / time.Second)
	res := map[string]any{
		"token_type": "Bearer", "access_token": at, "expires_in": secs, "ext_expires_in": secs,
		"scope": strings.Join(scopes, " "),
	}
	if e.st.Lifetime >= 2*time.Hour {
		res["refresh_in"] = secs / 2
	}
	return res
}

// userSession describes whose token is being made and by which client.
type userSession struct {
	user     *User
	client   *App
	family   string
	authTime time.Time
	scp      []string
	agent    *App // set for OBO: the token's actor
	nonce    string
	// redeemed is set when a refresh token is redeemed: the sign-in already chose its tokens, and Entra's docs make
	// only the first grant's id_token and refresh token depend on openid and offline_access.
	redeemed bool
}

// issueUser makes an access token and client_info, plus an id_token when openid was asked for and a new refresh token
// of the session's family when offline_access was.
func (e *Emulator) issueUser(req *request, ss *scopeSet, s *userSession) (map[string]any, *oauthError) {
	c := e.baseClaims(ss.res.AppID, req.now)
	c["azp"], c["azpacr"] = s.client.AppID, req.auth.acr
	c["idtyp"], c["oid"], c["sub"] = "user", s.user.OID, s.user.OID
	c["name"], c["preferred_username"] = s.user.DisplayName, s.user.UPN
	c["scp"] = strings.Join(s.scp, " ")
	c["sid"] = s.family
	c["xms_idrel"] = "1"
	if s.agent != nil {
		c["xms_act_fct"] = "11"
		c["xms_par_app_azp"] = s.agent.Parent
	}
	if req.cp1 {
		c["xms_cc"] = []string{"cp1"}
	}
	at, oe := e.sign(c)
	if oe != nil {
		return nil, oe
	}
	ci, _ := json.Marshal(map[string]string{"uid": s.user.OID, "utid": e.dir.Tenant.ID})
	res := e.tokenResponse(at, ss.requested)
	res["client_info"] = base64.RawURLEncoding.EncodeToString(ci)
	if ss.openid || s.redeemed {
		idc := e.baseClaims(s.client.AppID, req.now)
		delete(idc, "uti")
		idc["oid"], idc["sub"], idc["name"], idc["preferred_username"] = s.user.OID, s.user.OID, s.user.DisplayName, s.user.UPN
		if s.nonce != "" {
			idc["nonce"] = s.nonce
		}
		idt, oe := e.sign(idc)
		if oe != nil {
			return nil, oe
		}
		res["id_token"] = idt
	}
	if ss.offline || s.redeemed {
		res["refresh_token"] = e.issueRefresh(s, req.now)
	}
	return res, nil
}

// maxRefreshRecords bounds memory and state.json in long-running demos; see pruneRefresh.
const maxRefreshRecords = 10000

func (e *Emulator) issueRefresh(s *userSession, now time.Time) string {
	if len(e.st.Refresh) >= maxRefreshRecords {
		e.pruneRefresh(now)
	}
	t := "1.AEMU." + randString(48)
	e.st.Refresh[hashToken(t)] = &refreshRecord{Family: s.family, ClientID: s.client.AppID, UserOID: s.user.OID, AuthTime: s.authTime, LastUsed: now}
	return t
}

func (e *Emulator) checkGrantAllowed(c *App, grant string) *oauthError {
	if c.Kind == KindPublic && !slices.Contains(c.GrantTypes, grant) {
		return newErr(400, "unauthorized_client", 70000, "The client '%s' is not allowed to use the grant type '%s'.", c.AppID, grant)
	}
	return nil
}

func (e *Emulator) grantDeviceCode(req *request) (map[string]any, *oauthError) {
	code := req.f.Get("device_code")
	if code == "" {
		return nil, errMissingParam("device_code")
	}
	if oe := e.authenticate(req); oe != nil {
		return nil, oe
	}
	if oe := e.checkGrantAllowed(req.client, "device_code"); oe != nil {
		return nil, oe
	}
	dc := e.devices[code]
	if dc == nil || !strings.EqualFold(dc.clientID, req.client.AppID) {
		// Entra's device-code doc names its own poll errors; a client keys on them to decide whether to keep polling.
		return nil, newErr(400, "bad_verification_code", 70000, "The provided value for the input parameter 'device_code' is not valid.")
	}
	if req.now.After(dc.expires) {
		e.dropDevice(code)
		return nil, newErr(400, "expired_token", 70019, "Verification code expired.")
	}
	if dc.denied {
		e.dropDevice(code)
		return nil, newErr(400, "authorization_declined", 65004, "User declined to consent to access the app.")
	}
	if dc.userOID == "" {
		// Two polls within a second are a client ignoring the 5 s interval. MSAL does (its back-off starts at 50 ms)
		// and keeps polling on slow_down just as on authorization_pending, so this costs it nothing.
		fast := !dc.lastPoll.IsZero() && req.now.Sub(dc.lastPoll) < time.Second
		dc.lastPoll = req.now
		if fast {
			return nil, newErr(400, "slow_down", 70016, "OAuth 2.0 device flow error. Authorization is pending. Continue polling (more slowly).")
		}
		return nil, newErr(400, "authorization_pending", 70016, "OAuth 2.0 device flow error. Authorization is pending. Continue polling.")
	}
	e.dropDevice(code)
	ss, oe := e.parseScope(dc.scope)
	if oe != nil {
		return nil, oe
	}
	scp, oe := e.delegated(req.client, ss)
	if oe != nil {
		return nil, oe
	}
	u := e.dir.userByOID(dc.userOID)
	if oe := e.checkUser(u, dc.authTime, true); oe != nil {
		return nil, oe
	}
	req.cp1 = req.cp1 || dc.claims != "" && mustCP1(dc.claims)
	return e.issueUser(req, ss, &userSession{user: u, client: req.client, family: newUUID(), authTime: dc.authTime, scp: scp})
}

func mustCP1(claims string) bool {
	ok, _ := parseClaims(claims)
	return ok
}

func (e *Emulator) dropDevice(code string) {
	if dc := e.devices[code]; dc != nil {
		delete(e.userCodes, dc.userCode)
	}
	delete(e.devices, code)
}

func (e *Emulator) grantRefresh(req *request) (map[string]any, *oauthError) {
	rt := req.f.Get("refresh_token")
	if rt == "" {
		return nil, errMissingParam("refresh_token")
	}
	if oe := e.authenticate(req); oe != nil {
		return nil, oe
	}
	if oe := e.checkGrantAllowed(req.client, "refresh_token"); oe != nil {
		return nil, oe
	}
	rec := e.st.Refresh[hashToken(rt)]
	if rec == nil {
		// Entra answers a refresh token it cannot read with invalid_grant, so clients treat it as a dead sign-in.
		return nil, newErr(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid. The refresh token is not valid.")
	}
	if !strings.EqualFold(rec.ClientID, req.client.AppID) {
		return nil, newErr(400, "invalid_grant", 70000, "The refresh token was issued to a different client.")
	}
	if e.st.RevokedFamilies[rec.Family] {
		return nil, errRevoked()
	}
	if rec.Used {
		// A rotated-out token came back: someone holds a copy. Revoke the whole family, as Entra's reuse detection does.
		e.st.RevokedFamilies[rec.Family] = true
		e.log.Warn("refresh token reuse; family revoked", "client_id", rec.ClientID, "family", rec.Family)
		return nil, newErr(400, "invalid_grant", 70000, "Provided grant is invalid or malformed. The refresh token was already redeemed; its session is revoked.")
	}
	if req.now.Sub(rec.LastUsed) > refreshInactivity {
		return nil, errRefreshInactive()
	}
	u := e.dir.userByOID(rec.UserOID)
	if oe := e.checkUser(u, rec.AuthTime, false); oe != nil {
		return nil, oe
	}
	ss, oe := e.parseScope(req.f.Get("scope"))
	if oe != nil {
		return nil, oe
	}
	scp, oe := e.delegated(req.client, ss)
	if oe != nil {
		return nil, oe
	}
	rec.Used = true
	s := &userSession{user: u, client: req.client, family: rec.Family, authTime: rec.AuthTime, scp: scp, redeemed: true}
	if req.client.Kind == KindAgentIdentity {
		s.agent = req.client
	}
	return e.issueUser(req, ss, s)
}

func (e *Emulator) grantAuthCode(req *request) (map[string]any, *oauthError) {
	code := req.f.Get("code")
	if code == "" {
		return nil, errMissingParam("code")
	}
	if oe := e.authenticate(req); oe != nil {
		return nil, oe
	}
	if oe := e.checkGrantAllowed(req.client, "authorization_code"); oe != nil {
		return nil, oe
	}
	ac := e.codes[code]
	delete(e.codes, code) // single use, even when the redemption fails
	if ac == nil || !strings.EqualFold(ac.clientID, req.client.AppID) {
		return nil, newErr(400, "invalid_grant", 70000, "The provided value for the 'code' parameter is not valid.")
	}
	if req.now.After(ac.expires) {
		return nil, errCodeExpired()
	}
	if req.f.Get("redirect_uri") != ac.redirectURI {
		return nil, newErr(400, "invalid_grant", 70000, "The provided value for the 'redirect_uri' parameter does not match the authorization request.")
	}
	verifier := req.f.Get("code_verifier")
	if verifier == "" {
		return nil, errMissingParam("code_verifier")
	}
	sum := sha256.Sum256([]byte(verifier))
	if subtle.ConstantTimeCompare([]byte(base64.RawURLEncoding.EncodeToString(sum[:])), []byte(ac.challenge)) != 1 {
		return nil, newErr(400, "invalid_grant", 501481, "The Code_Verifier does not match the code_challenge supplied in the authorization request.")
	}
	ss, oe := e.parseScope(ac.scope)
	if oe != nil {
		return nil, oe
	}
	scp, oe := e.delegated(req.client, ss)
	if oe != nil {
		return nil, oe
	}
	u := e.dir.userByOID(ac.userOID)
	if oe := e.checkUser(u, ac.authTime, true); oe != nil {
		return nil, oe
	}
	req.cp1 = req.cp1 || ac.claims != "" && mustCP1(ac.claims)
	return e.issueUser(req, ss, &userSession{user: u, client: req.client, family: newUUID(), authTime: ac.authTime, scp: scp, nonce: ac.nonce})
}

func (e *Emulator) grantOBO(req *request) (map[string]any, *oauthError) {
	if req.f.Get("requested_token_use") != "on_behalf_of" {
		return nil, errInvalidRequest("requested_token_use must be on_behalf_of.")
	}
	assertion := req.f.Get("assertion")
	if assertion == "" {
		return nil, errMissingParam("assertion")
	}
	if req.client.Kind == KindPublic {
		return nil, newErr(401, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
	}
	if oe := e.authenticate(req); oe != nil {
		return nil, oe
	}
	ss, oe := e.parseScope(req.f.Get("scope"))
	if oe != nil {
		return nil, oe
	}
	j, reason := e.verifyOwn(assertion)
	if j == nil {
		return nil, errAssertionInvalid(reason)
	}
	exp, ok := j.num("exp")
	if !ok || !req.now.Before(time.Unix(exp, 0)) {
		return nil, errAssertionExpired()
	}
	wantAud := req.client.AppID
	if req.client.Kind == KindAgentIdentity {
		wantAud = req.client.Parent
	}
	if !strings.EqualFold(j.str("aud"), wantAud) {
		return nil, errAssertionInvalid(fmt.Sprintf("The assertion audience must be '%s'.", wantAud))
	}
	if j.str("idtyp") != "user" {
		return nil, errAssertionInvalid("The assertion is not a user token.")
	}
	u := e.dir.userByOID(j.str("oid"))
	iat, _ := j.num("iat")
	if oe := e.checkUser(u, time.Unix(iat, 0), false); oe != nil {
		return nil, oe
	}
	scp, oe := e.delegated(req.client, ss)
	if oe != nil {
		return nil, oe
	}
	s := &userSession{user: u, client: req.client, family: newUUID(), authTime: time.Unix(iat, 0), scp: scp}
	if req.client.Kind == KindAgentIdentity {
		s.agent = req.client
	}
	return e.issueUser(req, ss, s)
}

func (e *Emulator) grantClientCredentials(req *request) (map[string]any, *oauthError) {
	if req.client.Kind == KindPublic {
		return nil, newErr(400, "unauthorized_client", 70000, "The client '%s' is public and cannot use client_credentials.", req.client.AppID)
	}
	if oe := e.authenticate(req); oe != nil {
		return nil, oe
	}
	ss, oe := e.parseScope(req.f.Get("scope"))
	if oe != nil {
		return nil, oe
	}
	if !ss.def {
		return nil, newErr(400, "invalid_scope", 70011, "The provided value for the input parameter 'scope' is not valid. The scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.", truncate(strings.Join(ss.requested, " "), 200))
	}
	c := e.baseClaims(ss.res.AppID, req.now)
	c["azp"], c["azpacr"], c["idtyp"] = req.client.AppID, req.auth.acr, "app"
	c["oid"], c["sub"] = req.client.objectID(), req.client.objectID()
	c["xms_idrel"] = "7"
	if req.cp1 {
		c["xms_cc"] = []string{"cp1"}
	}
	fmi := req.f.Get("fmi_path")
	switch {
	case fmi != "":
		if req.client.Kind != KindBlueprint {
			return nil, errInvalidRequest("fmi_path is only accepted from an agent identity blueprint.")
		}
		if ss.res != tokenExchangeApp {
			return nil, errInvalidScope(truncate(strings.Join(ss.requested, " "), 200) + " (an fmi_path request must ask for " + tokenExchangeURI + "/.default)")
		}
		agent := e.dir.app(fmi)
		if agent == nil || agent.Kind != KindAgentIdentity || !strings.EqualFold(agent.Parent, req.client.AppID) {
			return nil, errUnknownApp(truncate(fmi, 80))
		}
		if agent.Disabled {
			return nil, errAppDisabled(agent.AppID)
		}
		c["sub"] = "/eid1/c/pub/t/" + guidB64(e.dir.Tenant.ID) + "/a/" + guidB64(req.client.AppID) + "/" + agent.AppID
		c["xms_act_fct"], c["xms_sub_fct"], c["xms_idrel"] = "1 9", "1 9", "7 26"
	case req.client.Kind == KindAgentIdentity:
		c["oid"], c["sub"] = req.client.AppID, req.client.AppID
		c["xms_par_app_azp"] = req.client.Parent
		if ss.res == tokenExchangeApp {
			c["xms_act_fct"], c["xms_sub_fct"], c["xms_idrel"] = "11 9 1", "9 1 11", "7 28"
		} else {
			c["xms_act_fct"], c["xms_sub_fct"] = "11", "11"
		}
	}
	if ss.res != tokenExchangeApp {
		if roles := e.dir.roles(req.client.AppID, ss.res.AppID); len(roles) > 0 {
			c["roles"] = roles
		}
	}
	at, oe := e.sign(c)
	if oe != nil {
		return nil, oe
	}
	return e.tokenResponse(at, ss.requested), nil
}

// pruneRefresh forgets refresh tokens that can no longer be redeemed: inactive ones, and rotated-out ones after a day
// (reuse of those is then answered as an unknown token rather than by revoking the family).
func (e *Emulator) pruneRefresh(now time.Time) {
	for k, r := range e.st.Refresh {
		idle := now.Sub(r.LastUsed)
		if idle > refreshInactivity || (r.Used && idle > 24*time.Hour) || e.st.RevokedFamilies[r.Family] {
			delete(e.st.Refresh, k)
		}
	}
}
