package entraemu

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// Ids of the default directory, repeated here because emutest imports this package.
const (
	tTenant    = "7f3c2a10-5b8e-4c1d-9a6f-2e4b8d0c1a93"
	tUPN       = "ada@contoso.example"
	tPassword  = "correct-horse-battery"
	tUserOID   = "b2c4e6f8-1a3b-4c5d-8e7f-9a0b1c2d3e4f"
	tPublic    = "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a"
	tBlueprint = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
	tSecret    = "blueprint-demo-secret-do-not-use"
	tAgent     = "c7d8e9f0-a1b2-4c3d-9e4f-5a6b7c8d9e0f"
	tUserScope = "api://a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d/access_as_user openid offline_access profile"
	tFilesRead = "api://files.contoso.example/Files.Read openid offline_access profile"
	tExchange  = "api://AzureADTokenExchange/.default openid offline_access profile"
)

// harness drives an in-process emulator through its handler, without TLS; the base URL is only used in claims.
type harness struct {
	t   testing.TB
	emu *Emulator
}

const testBase = "https://127.0.0.1:1"

func newHarness(t testing.TB, cfg Config) *harness {
	t.Helper()
	if cfg.BaseURL == "" {
		cfg.BaseURL = testBase
	}
	cfg.AdminToken = "admin-test-token"
	emu, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, emu: emu}
}

type reply struct {
	status int
	header http.Header
	body   []byte
	json   map[string]any
}

func (r reply) str(k string) string {
	s, _ := r.json[k].(string)
	return s
}

// code is the AADSTS number of an error reply, or 0.
func (r reply) code() int {
	if c, ok := r.json["error_codes"].([]any); ok && len(c) == 1 {
		f, _ := c[0].(float64)
		return int(f)
	}
	return 0
}

func (h *harness) do(method, path, contentType string, body io.Reader, hdr map[string]string) reply {
	req := httptest.NewRequest(method, path, body)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.emu.ServeHTTP(rec, req)
	r := reply{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
	_ = json.Unmarshal(r.body, &r.json)
	return r
}

func (h *harness) form(path string, f url.Values) reply {
	return h.do(http.MethodPost, path, "application/x-www-form-urlencoded; charset=utf-8", strings.NewReader(f.Encode()), nil)
}

func (h *harness) token(f url.Values) reply { return h.form("/"+tTenant+"/oauth2/v2.0/token", f) }

func (h *harness) admin(op string, body string) reply {
	return h.do(http.MethodPost, "/_admin/"+op, "application/json", strings.NewReader(body), map[string]string{"Authorization": "Bearer admin-test-token"})
}

// signIn runs the device-code flow over raw HTTP and returns the token reply.
func (h *harness) signIn() reply {
	h.t.Helper()
	dc := h.form("/"+tTenant+"/oauth2/v2.0/devicecode", url.Values{"client_id": {tPublic}, "scope": {tUserScope}})
	if dc.status != 200 {
		h.t.Fatalf("devicecode: %d %s", dc.status, dc.body)
	}
	page := h.form("/"+tTenant+"/oauth2/v2.0/deviceauth", url.Values{"user_code": {dc.str("user_code")}, "username": {tUPN}, "password": {tPassword}})
	if page.status != 200 || !strings.Contains(string(page.body), "You are signed in") {
		h.t.Fatalf("deviceauth: %d %s", page.status, page.body)
	}
	r := h.token(url.Values{"grant_type": {"device_code"}, "client_id": {tPublic}, "device_code": {dc.str("device_code")}, "client_info": {"1"}})
	if r.status != 200 {
		h.t.Fatalf("device code token: %d %s", r.status, r.body)
	}
	return r
}

func (h *harness) exchange(agent string) string {
	h.t.Helper()
	r := h.token(url.Values{"grant_type": {"client_credentials"}, "client_id": {tBlueprint}, "client_secret": {tSecret}, "scope": {tExchange}, "fmi_path": {agent}})
	if r.status != 200 {
		h.t.Fatalf("exchange: %d %s", r.status, r.body)
	}
	return r.str("access_token")
}

func (h *harness) obo(userToken, scope string) reply {
	return h.token(url.Values{
		"grant_type": {grantJWTBearer}, "client_id": {tAgent}, "client_assertion_type": {assertionTypeJWT},
		"client_assertion": {h.exchange(tAgent)}, "assertion": {userToken}, "requested_token_use": {"on_behalf_of"},
		"scope": {scope}, "client_info": {"1"},
	})
}

// tlsServer serves the emulator over TLS on 127.0.0.1 for MSAL, whose authority must be https.
func tlsServer(t testing.TB, cfg Config) (*Emulator, *httptest.Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.BaseURL = "https://" + ln.Addr().String()
	emu, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(emu)
	ts.Listener.Close()
	ts.Listener = ln
	ts.StartTLS()
	t.Cleanup(func() { emu.Close(); ts.Close() })
	return emu, ts
}
