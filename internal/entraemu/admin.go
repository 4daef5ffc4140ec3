package entraemu

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

// maxSigningKeys is how many keys the JWKS holds: the signing key and the one it replaced.
const maxSigningKeys = 2

// handleAdmin serves the admin API (docs/emulator.md lists every call). Bodies are JSON; answers are JSON.
func (e *Emulator) handleAdmin(w http.ResponseWriter, r *http.Request) {
	if e.adminToken == "" {
		http.NotFound(w, r)
		return
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(e.adminToken)) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="entra-emulator admin"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "admin token required"})
		return
	}
	op := strings.TrimPrefix(r.URL.Path, "/_admin/")
	body, err := io.ReadAll(io.LimitReader(r.Body, maxForm))
	if err != nil {
		writeJSON(w, 400, map[string]string{"error": "reading body"})
		return
	}
	res, status, err := e.admin(r.Method, op, body)
	if err != nil {
		writeJSON(w, status, map[string]string{"error": err.Error()})
		return
	}
	if res == nil {
		res = map[string]bool{"ok": true}
	}
	e.log.Info("admin call", "op", op)
	writeJSON(w, 200, res)
}

type adminReq struct {
	UPN      string   `json:"upn"`
	AppID    string   `json:"app_id"`
	Enabled  *bool    `json:"enabled"`
	MFA      *string  `json:"mfa"`
	Client   string   `json:"client"`
	Resource string   `json:"resource"`
	Scopes   []string `json:"scopes"`
	By       string   `json:"by"`
	Lifetime string   `json:"lifetime"`
	Clear    bool     `json:"clear"`
}

var errBadAdmin = errors.New("bad request")

func decodeAdmin(body []byte, v any) error {
	if len(strings.TrimSpace(string(body))) == 0 {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", errBadAdmin, err)
	}
	return nil
}

func (e *Emulator) admin(method, op string, body []byte) (any, int, error) {
	switch {
	case method == http.MethodGet && op == "counters":
		return e.counter.snapshot(), 200, nil
	case method == http.MethodPost && op == "counters/reset":
		e.counter.reset()
		return nil, 200, nil
	case method == http.MethodPost && op == "faults":
		var f Fault
		if err := decodeAdmin(body, &f); err != nil {
			return nil, 400, err
		}
		if err := f.validate(); err != nil {
			return nil, 400, err
		}
		e.faults.add(f)
		return nil, 200, nil
	case (method == http.MethodDelete && op == "faults") || (method == http.MethodPost && op == "faults/clear"):
		e.faults.clear()
		return nil, 200, nil
	case method == http.MethodGet && op == "clock":
		return map[string]any{"now": e.now().UTC(), "offset": e.offset().String()}, 200, nil
	}
	if method != http.MethodPost {
		return nil, 404, fmt.Errorf("no admin call %s %s", method, op)
	}
	var q adminReq
	if err := decodeAdmin(body, &q); err != nil {
		return nil, 400, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.nowLocked()
	user := func() (*User, error) {
		u := e.dir.userByUPN(q.UPN)
		if u == nil {
			return nil, fmt.Errorf("no user %q", q.UPN)
		}
		return u, nil
	}
	switch op {
	case "users/revoke":
		u, err := user()
		if err != nil {
			return nil, 404, err
		}
		e.st.UserRevokedAt[u.OID] = now
		for _, rec := range e.st.Refresh {
			if rec.UserOID == u.OID {
				e.st.RevokedFamilies[rec.Family] = true
			}
		}
		return nil, 200, nil
	case "users/enabled":
		u, err := user()
		if err != nil {
			return nil, 404, err
		}
		if q.Enabled == nil {
			return nil, 400, errors.New("enabled is required")
		}
		u.Disabled = !*q.Enabled
		return nil, 200, nil
	case "users/mfa":
		u, err := user()
		if err != nil {
			return nil, 404, err
		}
		if q.MFA == nil || !slices.Contains([]string{"", "required", "enrollment"}, *q.MFA) {
			return nil, 400, errors.New(`mfa must be "", "required" or "enrollment"`)
		}
		u.MFA = *q.MFA
		return nil, 200, nil
	case "users/reauth":
		u, err := user()
		if err != nil {
			return nil, 404, err
		}
		if q.Clear {
			delete(e.st.ReauthSince, u.OID)
		} else {
			e.st.ReauthSince[u.OID] = now
		}
		return nil, 200, nil
	case "apps/enabled":
		a := e.dir.app(q.AppID)
		if a == nil {
			return nil, 404, fmt.Errorf("no app %q", q.AppID)
		}
		if q.Enabled == nil {
			return nil, 400, errors.New("enabled is required")
		}
		a.Disabled = !*q.Enabled
		return nil, 200, nil
	case "consents/withdraw":
		n := 0
		for _, c := range e.dir.Consents {
			if !strings.EqualFold(c.Client, q.Client) || !strings.EqualFold(c.Resource, q.Resource) {
				continue
			}
			before := len(c.Scopes)
			if len(q.Scopes) == 0 {
				c.Scopes = nil
			} else {
				c.Scopes = slices.DeleteFunc(c.Scopes, func(s string) bool { return containsFold(q.Scopes, s) })
			}
			n += before - len(c.Scopes)
		}
		e.dir.Consents = slices.DeleteFunc(e.dir.Consents, func(c *Consent) bool { return len(c.Scopes) == 0 })
		if n == 0 {
			return nil, 404, errors.New("no such consent")
		}
		return map[string]int{"withdrawn": n}, 200, nil
	case "consents/grant":
		c := &Consent{Client: q.Client, Resource: q.Resource, Scopes: q.Scopes}
		d := e.dir.clone()
		d.Consents = append(d.Consents, c)
		if err := d.validate(); err != nil {
			return nil, 400, err
		}
		e.dir.Consents = append(e.dir.Consents, c)
		return nil, 200, nil
	case "keys/rotate":
		k, err := newSigningKey()
		if err != nil {
			return nil, 500, err
		}
		e.st.Keys = append([]*signingKey{k}, e.st.Keys...)
		if len(e.st.Keys) > maxSigningKeys {
			e.st.Keys = e.st.Keys[:maxSigningKeys]
		}
		return map[string]string{"kid": k.Kid}, 200, nil
	case "clock/shift":
		d, err := time.ParseDuration(q.By)
		if err != nil {
			return nil, 400, fmt.Errorf("by: %w", err)
		}
		e.st.ClockOffset += d
		return map[string]any{"now": e.nowLocked().UTC(), "offset": e.st.ClockOffset.String()}, 200, nil
	case "token-lifetime":
		d, err := time.ParseDuration(q.Lifetime)
		if err != nil || d < time.Minute || d > 24*time.Hour {
			return nil, 400, errors.New("lifetime must be a duration between 1m and 24h")
		}
		e.st.Lifetime = d
		return nil, 200, nil
	}
	return nil, 404, fmt.Errorf("no admin call POST %s", op)
}

func (e *Emulator) offset() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.st.ClockOffset
}
