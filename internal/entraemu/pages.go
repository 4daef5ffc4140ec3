package entraemu

import (
	"crypto/rand"
	"crypto/subtle"
	"html/template"
	"math/big"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

func (e *Emulator) handleDeviceCode(w http.ResponseWriter, r *http.Request) {
	tenant, f, ok := e.tenantForm(w, r)
	if !ok {
		return
	}
	res, oe := e.deviceCode(tenant, f)
	if oe != nil {
		e.writeError(w, r, oe)
		return
	}
	writeJSON(w, 200, res)
}

func (e *Emulator) deviceCode(tenant string, f url.Values) (map[string]any, *oauthError) {
	e.mu.Lock()
	defer e.mu.Unlock()
	clientID := f.Get("client_id")
	if clientID == "" {
		return nil, errMissingParam("client_id")
	}
	c := e.dir.app(clientID)
	if c == nil {
		return nil, errUnknownApp(clientID)
	}
	if c.Disabled {
		return nil, errAppDisabled(clientID)
	}
	if c.Kind != KindPublic {
		return nil, newErr(400, "unauthorized_client", 70000, "The client '%s' is not a public client and cannot use the device code flow.", clientID)
	}
	if oe := e.checkGrantAllowed(c, "device_code"); oe != nil {
		return nil, oe
	}
	if _, oe := e.parseScope(f.Get("scope")); oe != nil {
		return nil, oe
	}
	if cl := f.Get("claims"); cl != "" {
		if _, err := parseClaims(cl); err != nil {
			return nil, errInvalidRequest("The claims parameter is not valid JSON.")
		}
	}
	now := e.nowLocked()
	for code, dc := range e.devices {
		if now.After(dc.expires) {
			e.dropDevice(code)
		}
	}
	if len(e.devices) > 10000 {
		return nil, newErr(503, "temporarily_unavailable", 90033, "Too many pending device codes.")
	}
	userCode := newUserCode()
	for e.userCodes[userCode] != "" {
		userCode = newUserCode()
	}
	code := "DAQABAAEAAAEMU" + randString(48)
	e.devices[code] = &deviceCode{userCode: userCode, clientID: c.AppID, scope: f.Get("scope"), claims: f.Get("claims"), expires: now.Add(deviceCodeLifetime)}
	e.userCodes[userCode] = code
	uri := e.base + "/" + tenant + "/oauth2/v2.0/deviceauth"
	return map[string]any{
		"user_code": userCode, "device_code": code, "verification_uri": uri,
		"expires_in": int(deviceCodeLifetime / time.Second), "interval": 5,
		"message": "To sign in, use a web browser to open the page " + uri + " and enter the code " + userCode + " to authenticate.",
	}, nil
}

const userCodeAlphabet = "BCDFGHJKLMNPQRSTVWXZ23456789"

func newUserCode() string {
	var b strings.Builder
	for range 9 {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(userCodeAlphabet))))
		if err != nil {
			panic("entraemu: crypto/rand: " + err.Error())
		}
		b.WriteByte(userCodeAlphabet[n.Int64()])
	}
	return b.String()
}

func normalizeUserCode(s string) string {
	return strings.ToUpper(strings.NewReplacer("-", "", " ", "").Replace(strings.TrimSpace(s)))
}

var pageTmpl = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}} - entra-emulator</title></head>
<body>
<h1>{{.Title}}</h1>
{{if .Message}}<p id="message">{{.Message}}</p>{{end}}
{{if .Form}}<form method="post" action="{{.Action}}">
{{range $k, $v := .Hidden}}<input type="hidden" name="{{$k}}" value="{{$v}}">
{{end}}{{if .AskCode}}<label>Code <input name="user_code" value="{{.UserCode}}" autocomplete="off"></label><br>
{{end}}<label>Email or phone <input name="username" value="{{.Username}}" autocomplete="username"></label><br>
<label>Password <input name="password" type="password" autocomplete="current-password"></label><br>
<button type="submit" name="action" value="signin">Sign in</button>
<button type="submit" name="action" value="deny">Cancel</button>
</form>{{end}}
<p><small>entra-emulator: a local test identity provider. Not Microsoft Entra ID.</small></p>
</body></html>
`))

type page struct {
	Title, Message, Action, UserCode, Username string
	Form, AskCode                              bool
	Hidden                                     map[string]string
}

func renderPage(w http.ResponseWriter, status int, p page) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Frame-Options", "DENY")
	w.WriteHeader(status)
	_ = pageTmpl.Execute(w, p)
}

// handleDeviceAuth is the device-code sign-in page: GET shows the form, POST signs in with user_code, username and
// password.
func (e *Emulator) handleDeviceAuth(w http.ResponseWriter, r *http.Request) {
	if _, ok := e.checkTenant(w, r); !ok {
		return
	}
	p := page{Title: "Enter code", Action: r.URL.Path, Form: true, AskCode: true}
	switch r.Method {
	case http.MethodGet:
		p.UserCode = r.URL.Query().Get("otc")
		renderPage(w, 200, p)
		return
	case http.MethodPost:
	default:
		w.Header().Set("Allow", "GET, POST")
		renderPage(w, http.StatusMethodNotAllowed, page{Title: "Method not allowed"})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		p.Message = "The form could not be read."
		renderPage(w, 400, p)
		return
	}
	status, msg := e.approveDevice(r.PostForm)
	p.UserCode, p.Username = r.PostForm.Get("user_code"), r.PostForm.Get("username")
	if status != 200 {
		p.Message = msg
		renderPage(w, status, p)
		return
	}
	renderPage(w, 200, page{Title: "Signed in", Message: msg})
}

func (e *Emulator) approveDevice(f url.Values) (int, string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	code := e.userCodes[normalizeUserCode(f.Get("user_code"))]
	dc := e.devices[code]
	if dc == nil {
		return 400, "That code wasn't recognised. Check the code and try again."
	}
	now := e.nowLocked()
	if now.After(dc.expires) {
		e.dropDevice(code)
		return 400, "That code has expired. Go back to the application and start the sign-in again."
	}
	if f.Get("action") == "deny" {
		dc.denied = true
		return 200, "You cancelled the sign-in. You can close this window."
	}
	u, oe := e.checkPassword(f.Get("username"), f.Get("password"))
	if oe != nil {
		return oe.status, oe.desc
	}
	dc.userOID, dc.authTime = u.OID, now
	e.log.Info("device code approved", "client_id", dc.clientID, "user_oid", u.OID)
	return 200, "You are signed in. You have signed in to the application on your device; you may now close this window."
}

// checkPassword validates a sign-in form. The answers are deliberately the same for an unknown user and a bad password.
func (e *Emulator) checkPassword(upn, password string) (*User, *oauthError) {
	u := e.dir.userByUPN(upn)
	if u == nil || subtle.ConstantTimeCompare([]byte(u.Password), []byte(password)) != 1 {
		return nil, &oauthError{status: 400, code: 50126, desc: "Your account or password is incorrect (AADSTS50126: error validating credentials due to invalid username or password)."}
	}
	if u.Disabled {
		return nil, &oauthError{status: 403, code: 50057, desc: "Your account has been disabled (AADSTS50057: the user account is disabled)."}
	}
	return u, nil
}

// handleAuthorize is the authorization endpoint for the code flow with PKCE (S256 only) and a loopback redirect.
func (e *Emulator) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	if _, ok := e.checkTenant(w, r); !ok {
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		renderPage(w, 400, page{Title: "Sign in", Message: "The request could not be read."})
		return
	}
	q := r.Form
	if name := duplicated(q); name != "" {
		oe := errDuplicateParam(name)
		renderPage(w, 400, page{Title: "Sign in", Message: "AADSTS" + strconv.Itoa(oe.code) + ": " + oe.desc})
		return
	}
	e.mu.Lock()
	c := e.dir.app(q.Get("client_id"))
	e.mu.Unlock()
	if c == nil || c.Kind != KindPublic && c.Kind != KindConfidential && c.Kind != KindBlueprint {
		renderPage(w, 400, page{Title: "Sign in", Message: "AADSTS700016: Application with identifier '" + truncate(q.Get("client_id"), 80) + "' was not found in the directory."})
		return
	}
	redirect := q.Get("redirect_uri")
	if !redirectAllowed(c.RedirectURIs, redirect) {
		renderPage(w, 400, page{Title: "Sign in", Message: "AADSTS50011: The redirect URI specified in the request does not match the redirect URIs configured for the application."})
		return
	}
	mode := q.Get("response_mode")
	if mode != "form_post" {
		mode = "query"
	}
	fail := func(code, desc string) {
		respondToClient(w, r, redirect, mode, url.Values{"error": {code}, "error_description": {desc}, "state": {q.Get("state")}})
	}
	if q.Get("response_type") != "code" {
		fail("unsupported_response_type", "AADSTS700054: response_type must be 'code'.")
		return
	}
	if q.Get("code_challenge") == "" || q.Get("code_challenge_method") != "S256" {
		fail("invalid_request", "AADSTS9002325: Proof Key for Code Exchange with code_challenge_method S256 is required.")
		return
	}
	e.mu.Lock()
	_, oe := e.parseScope(q.Get("scope"))
	e.mu.Unlock()
	if oe != nil {
		fail(oe.err, "AADSTS"+strconv.Itoa(oe.code)+": "+oe.desc)
		return
	}
	hidden := map[string]string{}
	for _, k := range []string{"client_id", "redirect_uri", "scope", "state", "code_challenge", "code_challenge_method", "nonce", "claims", "response_type", "response_mode"} {
		if v := q.Get(k); v != "" {
			hidden[k] = v
		}
	}
	p := page{Title: "Sign in", Action: r.URL.Path, Form: true, Hidden: hidden, Username: q.Get("login_hint")}
	if r.Method != http.MethodPost {
		renderPage(w, 200, p)
		return
	}
	if r.PostForm.Get("action") == "deny" {
		fail("access_denied", "AADSTS65004: User declined to consent to access the app.")
		return
	}
	e.mu.Lock()
	u, oe := e.checkPassword(r.PostForm.Get("username"), r.PostForm.Get("password"))
	var code string
	if oe == nil {
		now := e.nowLocked()
		code = "1.AEMU." + randString(48)
		for k, ac := range e.codes {
			if now.After(ac.expires) {
				delete(e.codes, k)
			}
		}
		e.codes[code] = &authCode{clientID: c.AppID, redirectURI: redirect, challenge: q.Get("code_challenge"), scope: q.Get("scope"),
			claims: q.Get("claims"), nonce: q.Get("nonce"), userOID: u.OID, expires: now.Add(10 * time.Minute), authTime: now}
	}
	e.mu.Unlock()
	if oe != nil {
		p.Message = oe.desc
		renderPage(w, oe.status, p)
		return
	}
	respondToClient(w, r, redirect, mode, url.Values{"code": {code}, "state": {q.Get("state")}})
}

var formPostTmpl = template.Must(template.New("form_post").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Working...</title></head>
<body onload="document.forms[0].submit()">
<form method="post" action="{{.Action}}">
{{range $k, $v := .Fields}}<input type="hidden" name="{{$k}}" value="{{$v}}">
{{end}}<noscript><button type="submit">Continue</button></noscript>
</form></body></html>
`))

// respondToClient sends the authorization response to the redirect URI: a 302 with a query (response_mode=query) or an
// auto-submitting form (response_mode=form_post, which MSAL Go's interactive flow asks for).
func respondToClient(w http.ResponseWriter, r *http.Request, redirect, mode string, params url.Values) {
	fields := map[string]string{}
	for k, v := range params {
		if len(v) > 0 && v[0] != "" {
			fields[k] = v[0]
		}
	}
	if mode == "form_post" {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_ = formPostTmpl.Execute(w, struct {
			Action template.URL
			Fields map[string]string
		}{template.URL(redirect), fields}) // redirect passed redirectAllowed: a registered or loopback URL

		return
	}
	dst, _ := url.Parse(redirect)
	v := dst.Query()
	for k, f := range fields {
		v.Set(k, f)
	}
	dst.RawQuery = v.Encode()
	http.Redirect(w, r, dst.String(), http.StatusFound)
}

// redirectAllowed applies Entra's loopback rule: for http://localhost and http://127.0.0.1 the port is ignored.
func redirectAllowed(registered []string, got string) bool {
	g, err := url.Parse(got)
	if err != nil || g.Fragment != "" {
		return false
	}
	for _, reg := range registered {
		rg, err := url.Parse(reg)
		if err != nil {
			continue
		}
		loop := rg.Scheme == "http" && (rg.Hostname() == "localhost" || rg.Hostname() == "127.0.0.1")
		samePath := strings.TrimSuffix(rg.Path, "/") == strings.TrimSuffix(g.Path, "/")
		if loop && g.Scheme == "http" && g.Hostname() == rg.Hostname() && samePath {
			return true
		}
		if !loop && got == reg {
			return true
		}
	}
	return false
}
