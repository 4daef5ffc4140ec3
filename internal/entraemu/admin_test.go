package entraemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestAdminAuth(t *testing.T) {
	h := newHarness(t, Config{})
	cases := []struct {
		name, method, op, auth, body string
		status                       int
	}{
		{"no token", http.MethodGet, "counters", "", "", 401},
		{"wrong token", http.MethodGet, "counters", "Bearer admin-test-tokeX", "", 401},
		{"basic auth", http.MethodGet, "counters", "Basic admin-test-token", "", 401},
		{"ok", http.MethodGet, "counters", "Bearer admin-test-token", "", 200},
		{"unknown op", http.MethodPost, "nope", "Bearer admin-test-token", "", 404},
		{"unknown user", http.MethodPost, "users/revoke", "Bearer admin-test-token", `{"upn":"bob@x"}`, 404},
		{"unknown key", http.MethodPost, "users/revoke", "Bearer admin-test-token", `{"upn":"` + tUPN + `","x":1}`, 400},
		{"bad fault", http.MethodPost, "faults", "Bearer admin-test-token", `{"kind":"status","status":200}`, 400},
		{"4xx fault with an Entra body", http.MethodPost, "faults", "Bearer admin-test-token", `{"kind":"status","status":403}`, 400},
		{"unknown fault body", http.MethodPost, "faults", "Bearer admin-test-token", `{"kind":"status","status":503,"body":"xml"}`, 400},
		{"fault body on a reset", http.MethodPost, "faults", "Bearer admin-test-token", `{"kind":"reset","body":"html"}`, 400},
		{"retry_after_date without throttle", http.MethodPost, "faults", "Bearer admin-test-token", `{"kind":"status","status":503,"retry_after_date":true}`, 400},
		{"bad lifetime", http.MethodPost, "token-lifetime", "Bearer admin-test-token", `{"lifetime":"10s"}`, 400},
		{"consent for an unknown scope", http.MethodPost, "consents/grant", "Bearer admin-test-token", `{"client":"` + tAgent + `","resource":"e5f6a7b8-c9d0-4e1f-8a2b-3c4d5e6f7a8b","scopes":["Nope"]}`, 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do(tc.method, "/_admin/"+tc.op, "application/json", strings.NewReader(tc.body), map[string]string{"Authorization": tc.auth})
			if r.status != tc.status {
				t.Fatalf("got %d %s, want %d", r.status, r.body, tc.status)
			}
		})
	}
	h2 := newHarness(t, Config{})
	h2.emu.adminToken = ""
	if r := h2.do(http.MethodGet, "/_admin/counters", "", nil, map[string]string{"Authorization": "Bearer "}); r.status != 404 {
		t.Fatalf("admin API without a token configured: %d", r.status)
	}
}

func TestConsentGrantAndTokenLifetime(t *testing.T) {
	h := newHarness(t, Config{})
	user := h.signIn().str("access_token")
	write := "api://files.contoso.example/Files.ReadWrite"
	if r := h.obo(user, write); r.code() != 65001 {
		t.Fatalf("before grant: %s", r.body)
	}
	if r := h.admin("consents/grant", `{"client":"`+tAgent+`","resource":"e5f6a7b8-c9d0-4e1f-8a2b-3c4d5e6f7a8b","scopes":["Files.ReadWrite"]}`); r.status != 200 {
		t.Fatal(string(r.body))
	}
	h.admin("token-lifetime", `{"lifetime":"3h"}`)
	r := h.obo(user, write+" openid")
	if r.status != 200 || r.json["expires_in"] != float64(3*3600) || r.json["refresh_in"] != float64(3*1800) {
		t.Fatalf("after grant: %s", r.body)
	}
	if got := decodeClaims(t, r.str("access_token"))["scp"]; got != "Files.ReadWrite" {
		t.Errorf("scp = %v", got)
	}
}

func TestFaults(t *testing.T) {
	h := newHarness(t, Config{})
	cc := url.Values{"grant_type": {"client_credentials"}, "client_id": {tBlueprint}, "client_secret": {tSecret}, "scope": {tExchange}, "fmi_path": {tAgent}}
	cases := []struct {
		name   string
		fault  string
		check  func(t *testing.T, r reply)
		repeat bool // the fault has no count: clear it afterwards
	}{
		{"503 once", `{"endpoint":"token","kind":"status","status":503,"count":1}`, func(t *testing.T, r reply) {
			if r.status != 503 || r.str("error") != "server_error" {
				t.Fatalf("%d %s", r.status, r.body)
			}
		}, false},
		{"429 with Retry-After", `{"endpoint":"token","grant_type":"client_credentials","kind":"throttle","retry_after":7,"count":1}`, func(t *testing.T, r reply) {
			if r.status != 429 || r.header.Get("Retry-After") != "7" {
				t.Fatalf("%d %v", r.status, r.header)
			}
		}, false},
		{"429 with Retry-After as an HTTP-date on the emulator's clock", `{"endpoint":"token","kind":"throttle","retry_after":90,"retry_after_date":true,"count":1}`, func(t *testing.T, r reply) {
			at, err1 := http.ParseTime(r.header.Get("Retry-After"))
			date, err2 := http.ParseTime(r.header.Get("Date"))
			if r.status != 429 || err1 != nil || err2 != nil || at.Sub(date) != 90*time.Second || r.str("error") != "temporarily_unavailable" {
				t.Fatalf("%d %v %s", r.status, r.header, r.body)
			}
		}, false},
		{"503 as a gateway's HTML page", `{"endpoint":"token","kind":"status","status":503,"body":"html","count":1}`, func(t *testing.T, r reply) {
			if r.status != 503 || r.json != nil || !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") || !strings.HasPrefix(string(r.body), "<!DOCTYPE html>") {
				t.Fatalf("%d %v %s", r.status, r.header, r.body)
			}
		}, false},
		{"a proxy's 403 page", `{"endpoint":"token","kind":"status","status":403,"body":"html","count":1}`, func(t *testing.T, r reply) {
			if r.status != 403 || !strings.HasPrefix(string(r.body), "<!DOCTYPE html>") {
				t.Fatalf("%d %s", r.status, r.body)
			}
		}, false},
		{"502 without a body", `{"endpoint":"token","kind":"status","status":502,"body":"empty","count":1}`, func(t *testing.T, r reply) {
			if r.status != 502 || len(r.body) != 0 {
				t.Fatalf("%d %s", r.status, r.body)
			}
		}, false},
		{"malformed JSON", `{"kind":"malformed","count":1}`, func(t *testing.T, r reply) {
			if r.status != 200 || r.json != nil {
				t.Fatalf("%d %s", r.status, r.body)
			}
		}, false},
		{"latency", `{"endpoint":"token","kind":"latency","latency_ms":150,"count":1}`, nil, false},
		{"other grant type untouched", `{"endpoint":"token","grant_type":"refresh_token","kind":"status","status":500}`, func(t *testing.T, r reply) {
			if r.status != 200 {
				t.Fatalf("%d %s", r.status, r.body)
			}
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if r := h.admin("faults", tc.fault); r.status != 200 {
				t.Fatalf("inject: %s", r.body)
			}
			start := time.Now()
			r := h.token(cc)
			if tc.check != nil {
				tc.check(t, r)
			} else if r.status != 200 || time.Since(start) < 150*time.Millisecond {
				t.Fatalf("latency fault: %d after %v", r.status, time.Since(start))
			}
			if tc.repeat {
				h.admin("faults/clear", "")
			}
			if r := h.token(cc); r.status != 200 {
				t.Fatalf("fault outlived its count: %d %s", r.status, r.body)
			}
		})
	}
}

// TestFaultsOverTLS covers the faults that act on the connection: reset and hang.
func TestFaultsOverTLS(t *testing.T) {
	emu, ts := tlsServer(t, Config{AdminToken: "a"})
	c := ts.Client()
	post := func(ctx context.Context) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/"+tTenant+"/oauth2/v2.0/token",
			strings.NewReader(url.Values{"grant_type": {"client_credentials"}, "client_id": {tBlueprint}, "client_secret": {tSecret}, "scope": {tExchange}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		return c.Do(req)
	}
	admin := func(op, body string) {
		req, _ := http.NewRequest(http.MethodPost, ts.URL+"/_admin/"+op, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer a")
		resp, err := c.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("admin %s: %v %v", op, err, resp)
		}
		resp.Body.Close()
	}
	admin("faults", `{"endpoint":"token","kind":"reset","count":1}`)
	if resp, err := post(context.Background()); err == nil {
		resp.Body.Close()
		t.Fatalf("reset fault answered %d", resp.StatusCode)
	}
	admin("faults", `{"endpoint":"token","kind":"hang"}`)
	done := make(chan error, 1)
	go func() {
		resp, err := post(context.Background())
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				err = errors.New(resp.Status)
			}
		}
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("hung request returned early: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	admin("faults/clear", "")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("released request: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("clearing faults did not release the hung request")
	}
	// A hung request whose client gives up frees its handler.
	admin("faults", `{"endpoint":"token","kind":"hang"}`)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if resp, err := post(ctx); !errors.Is(err, context.DeadlineExceeded) {
		detail := ""
		if resp != nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			detail = fmt.Sprintf(" (answered %s after %v: %q)", resp.Status, time.Since(start), body)
		}
		t.Fatalf("client timeout: %v%s", err, detail)
	}
	emu.Close()
}

func TestCounters(t *testing.T) {
	h := newHarness(t, Config{})
	h.signIn()
	for range 3 {
		h.exchange(tAgent)
	}
	c := h.emu.counter.snapshot()
	if c.ByGrantType["client_credentials"] != 3 || c.ByGrantType["device_code"] != 1 || c.ByClientID[tBlueprint] != 3 ||
		c.ByEndpoint["devicecode"] != 1 || c.ByEndpoint["deviceauth"] != 1 || c.MaxPerSecond < 1 || c.Total != 6 {
		t.Fatalf("counters: %+v", c)
	}
	h.admin("counters/reset", "")
	if c := h.emu.counter.snapshot(); c.Total != 0 || len(c.ByGrantType) != 0 {
		t.Fatalf("after reset: %+v", c)
	}
	// max_per_second counts token requests within the same second.
	base := time.Unix(1000, 0)
	for i := range 5 {
		h.emu.counter.record("token", "client_credentials", tBlueprint, base.Add(time.Duration(i)*100*time.Millisecond))
	}
	h.emu.counter.record("token", "client_credentials", tBlueprint, base.Add(1500*time.Millisecond))
	if c := h.emu.counter.snapshot(); c.MaxPerSecond != 5 {
		t.Fatalf("max per second = %d, want 5", c.MaxPerSecond)
	}
}
