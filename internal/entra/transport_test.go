package entra_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentidd/agentidd/internal/entra"
)

// fakeIdP answers OIDC metadata and the blueprint's exchange like the emulator, and the agent identity's token request
// with whatever the test sets: the real MSAL client turns each answer into the error the daemon sees.
type fakeIdP struct {
	srv    *httptest.Server
	mu     sync.Mutex
	answer func(w http.ResponseWriter, r *http.Request)
	issuer string // overrides the metadata's issuer
}

// set changes the answer; a handler of an earlier case (a hang) may still be running.
func (f *fakeIdP) set(answer func(w http.ResponseWriter, r *http.Request)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answer = answer
}

const fakeSecret = "blueprint-secret-that-must-not-leak"

func newFakeIdP(t *testing.T) *fakeIdP {
	t.Helper()
	f := &fakeIdP{}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		base := "https://" + r.Host + "/tenant"
		if strings.HasSuffix(r.URL.Path, "/openid-configuration") {
			f.mu.Lock()
			issuer := f.issuer
			f.mu.Unlock()
			if issuer == "" {
				issuer = base + "/v2.0"
			}
			fmt.Fprintf(w, `{"issuer":%q,"token_endpoint":"%s/oauth2/v2.0/token","authorization_endpoint":"%s/oauth2/v2.0/authorize"}`, issuer, base, base)
			return
		}
		if err := r.ParseForm(); err == nil && r.PostForm.Get("fmi_path") != "" {
			fmt.Fprint(w, `{"access_token":"exchange-token","expires_in":3600,"token_type":"Bearer"}`)
			return
		}
		f.mu.Lock()
		answer := f.answer
		f.mu.Unlock()
		answer(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeIdP) client(t *testing.T, authority string, hc *http.Client) *entra.Client {
	t.Helper()
	c, err := entra.New(entra.Config{Authority: authority, ClientID: "public-client", BlueprintAppID: "blueprint", HTTPClient: hc,
		DevAuthority: true, BlueprintSecret: func() (string, error) { return fakeSecret, nil }})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// appOnly runs one agent exchange against authority and classifies its failure.
func (f *fakeIdP) appOnly(t *testing.T, authority string, hc *http.Client, timeout time.Duration) *entra.Error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := f.client(t, authority, hc).AppOnly(ctx, "agent-identity", []string{"api://resource/.default"}, "")
	if err == nil {
		t.Fatal("the exchange succeeded")
	}
	return entra.Classify(err)
}

// TestClassifyMalformedAnswerByItsShapeNotItsBytes: a 200 whose body is not a token answer reaches the daemon as MSAL's
// JSON error, with the raw body in its text. The class used to hang on whether that text happened to contain "EOF" or
// "connection reset", and a truncated token answer carries an access token: base64url holds "EOF" in a few tokens in
// a thousand, so the same fault was now INTERNAL, now "offline". The verdict must come from what the answer is.
func TestClassifyMalformedAnswerByItsShapeNotItsBytes(t *testing.T) {
	f := newFakeIdP(t)
	authority := f.srv.URL + "/tenant"
	for _, body := range []string{
		`{"token_type":"Bearer","access_token":"eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJ4In0.abcEOFdef","expires_in":`,
		`{"token_type":"Bearer","access_token":"eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJ4In0.abcdef","expires_in":`,
		`{"token_type":"Bearer","access_token":"connection reset i/o timeout broken pipe","expires_in":`,
	} {
		f.set(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, body)
		})
		e := f.appOnly(t, authority, f.srv.Client(), 10*time.Second)
		if e.Class != entra.ClassOther {
			t.Errorf("truncated token answer %q: class %v, want %v", body, e.Class, entra.ClassOther)
		}
		if strings.Contains(e.Error(), "eyJ") || strings.Contains(e.Summary, "eyJ") {
			t.Errorf("the classified error quotes the answer: %v", e)
		}
	}
}

// TestClassifyTransportAndProxyAnswers: failures on the way to the IdP, and answers from something in the way (a
// proxy's or captive portal's HTML page), are the network's doing, not the IdP's verdict on a principal: the daemon
// must call itself offline and keep serving, not report an internal error or purge anything.
func TestClassifyTransportAndProxyAnswers(t *testing.T) {
	f := newFakeIdP(t)
	authority := f.srv.URL + "/tenant"
	html := func(status int) func(w http.ResponseWriter, r *http.Request) {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.WriteHeader(status)
			fmt.Fprint(w, "<!DOCTYPE html>\n<html><head><style>body{font:sans}</style></head><body>Please sign in to the Wi-Fi</body></html>")
		}
	}
	cases := []struct {
		name   string
		answer func(w http.ResponseWriter, r *http.Request)
		class  entra.Class
	}{
		{"captive portal: 200 HTML", html(http.StatusOK), entra.ClassTransient},
		{"proxy: 403 HTML", html(http.StatusForbidden), entra.ClassTransient},
		{"proxy: 404 HTML", html(http.StatusNotFound), entra.ClassTransient},
		{"proxy: 407 without body", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusProxyAuthRequired) }, entra.ClassTransient},
		{"408 request timeout", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusRequestTimeout) }, entra.ClassTransient},
		{"gateway: 502 HTML", html(http.StatusBadGateway), entra.ClassTransient},
		{"503 without body", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }, entra.ClassTransient},
		{"504 with an AADSTS body", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusGatewayTimeout)
			fmt.Fprint(w, `{"error":"server_error","error_description":"AADSTS90033: A transient error has occurred.","error_codes":[90033]}`)
		}, entra.ClassTransient},
		{"400 temporarily_unavailable", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"error":"temporarily_unavailable","error_description":"AADSTS90033: try again.","error_codes":[90033]}`)
		}, entra.ClassTransient},
		{"connection dropped", func(w http.ResponseWriter, r *http.Request) {
			c, _, _ := w.(http.Hijacker).Hijack()
			c.Close()
		}, entra.ClassTransient},
		{"hang past the deadline", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }, entra.ClassTransient},
		// Not the network's doing: a JSON 404 is an answer, and so is a 400 that says nothing we know.
		{"404 JSON without an OAuth error", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"message":"no such route"}`)
		}, entra.ClassOther},
		{"400 unknown OAuth error", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"error":"access_denied","error_description":"AADSTS99998: no.","error_codes":[99998]}`)
		}, entra.ClassOther},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f.set(c.answer)
			e := f.appOnly(t, authority, f.srv.Client(), 2*time.Second)
			if e.Class != c.class {
				t.Errorf("class %v (%v), want %v", e.Class, e, c.class)
			}
			if e.Subject != entra.SubjectNone {
				t.Errorf("subject %v: nothing may be purged for this", e.Subject)
			}
		})
	}

	f.set(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	for _, c := range []struct {
		name      string
		authority string
		hc        *http.Client
	}{
		{"TLS: the IdP's certificate is not trusted", authority, &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12}}}},
		{"DNS: no such host", "https://idp.invalid/tenant", f.srv.Client()},
		{"connection refused", "https://127.0.0.1:1/tenant", f.srv.Client()},
	} {
		t.Run(c.name, func(t *testing.T) {
			if e := f.appOnly(t, c.authority, c.hc, 10*time.Second); e.Class != entra.ClassTransient || e.Subject != entra.SubjectNone {
				t.Errorf("class %v subject %v (%v), want transient", e.Class, e.Subject, e)
			}
		})
	}
}

// TestClassifyAuthorityMismatchIsNotOffline: OIDC metadata whose issuer does not match the configured authority
// (ENTRA-NOTES §6: localhost against 127.0.0.1 is enough) fails in MSAL's endpoint resolution, and the words "unable
// to resolve an endpoint" made that "identity provider unreachable": the daemon called itself offline and told agents
// to retry, for ever, hiding a configuration error that no retry mends.
func TestClassifyAuthorityMismatchIsNotOffline(t *testing.T) {
	f := newFakeIdP(t)
	f.set(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	f.mu.Lock()
	f.issuer = strings.Replace(f.srv.URL, "127.0.0.1", "localhost", 1) + "/tenant/v2.0"
	f.mu.Unlock()
	e := f.appOnly(t, f.srv.URL+"/tenant", f.srv.Client(), 10*time.Second)
	if e.Class != entra.ClassOther || e.Subject != entra.SubjectNone {
		t.Errorf("class %v subject %v (%v), want %v", e.Class, e.Subject, e, entra.ClassOther)
	}
	if !strings.Contains(e.Summary, "authority") {
		t.Errorf("summary %q does not point at the configured authority", e.Summary)
	}
}
