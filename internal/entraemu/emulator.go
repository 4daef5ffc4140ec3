// Package entraemu is a local stand-in for Microsoft Entra ID's v2 endpoints, good enough that unmodified MSAL Go
// completes device code, client credentials (secret, certificate, Agent ID fmi_path exchange), on-behalf-of, refresh
// and authorization code flows against it. It is an independent program: it imports nothing else from agentidd.
//
// Everything it issues is signed with its own keys and means nothing outside the emulator. docs/emulator.md lists
// what it implements and where it deliberately differs from Entra.
package entraemu

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// DefaultTokenLifetime is the access-token lifetime unless configured otherwise.
const DefaultTokenLifetime = time.Hour

// refreshInactivity is how long an unused refresh token stays valid (Entra: 90 days).
const refreshInactivity = 90 * 24 * time.Hour

// Config configures an Emulator.
type Config struct {
	// BaseURL is the scheme, host and port clients reach the emulator at, e.g. https://127.0.0.1:8443. Issuers and
	// endpoints are built from it, so it must be known before the first request.
	BaseURL string
	// Directory is the tenant; nil means DefaultDirectory. The emulator works on its own copy.
	Directory *Directory
	// TokenLifetime of access tokens; zero means DefaultTokenLifetime.
	TokenLifetime time.Duration
	// AdminToken guards /_admin/; empty disables the admin API.
	AdminToken string
	Logger     *slog.Logger
	// State restores a snapshot taken by Snapshot (keys, sessions, directory changes); nil starts afresh.
	State *State
}

// State is the part of the emulator that survives a restart.
type State struct {
	Directory       *Directory                `json:"directory"`
	Keys            []*signingKey             `json:"keys"`
	ClockOffset     time.Duration             `json:"clock_offset"`
	Lifetime        time.Duration             `json:"lifetime"`
	Refresh         map[string]*refreshRecord `json:"refresh"` // by SHA-256 of the token, never the token itself
	RevokedFamilies map[string]bool           `json:"revoked_families"`
	UserRevokedAt   map[string]time.Time      `json:"user_revoked_at"` // by user oid
	ReauthSince     map[string]time.Time      `json:"reauth_since"`    // by user oid
	UsedJTIs        map[string]time.Time      `json:"used_jtis"`
}

// refreshRecord is one refresh token. Tokens of one sign-in form a family: reusing a rotated-out token revokes it.
type refreshRecord struct {
	Family   string    `json:"family"`
	ClientID string    `json:"client_id"`
	UserOID  string    `json:"user_oid"`
	AuthTime time.Time `json:"auth_time"` // when the user last proved who they are
	LastUsed time.Time `json:"last_used"` // issue time of this token
	Used     bool      `json:"used"`
}

type deviceCode struct {
	userCode string
	clientID string
	scope    string
	claims   string
	expires  time.Time
	lastPoll time.Time
	userOID  string // set once signed in
	denied   bool
	authTime time.Time
}

type authCode struct {
	clientID, redirectURI, challenge, scope, claims, nonce, userOID string
	expires                                                         time.Time
	authTime                                                        time.Time
}

// Emulator is the HTTP handler. It is safe for concurrent use.
type Emulator struct {
	base       string
	log        *slog.Logger
	adminToken string
	handler    http.Handler

	mu        sync.Mutex
	dir       *Directory
	st        *State
	devices   map[string]*deviceCode // by device_code
	userCodes map[string]string      // user_code -> device_code
	codes     map[string]*authCode

	faults  faultSet
	counter counters
	closing chan struct{}
	once    sync.Once
}

// New builds an emulator. It generates a signing key unless the state brings some.
func New(cfg Config) (*Emulator, error) {
	if !strings.HasPrefix(cfg.BaseURL, "https://") {
		return nil, fmt.Errorf("base URL %q must be https", cfg.BaseURL)
	}
	e := &Emulator{
		base:       strings.TrimSuffix(cfg.BaseURL, "/"),
		log:        cfg.Logger,
		adminToken: cfg.AdminToken,
		devices:    map[string]*deviceCode{},
		userCodes:  map[string]string{},
		codes:      map[string]*authCode{},
		closing:    make(chan struct{}),
	}
	if e.log == nil {
		e.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	st := cfg.State
	if st == nil {
		st = &State{}
	}
	if st.Directory == nil {
		d := cfg.Directory
		if d == nil {
			d = DefaultDirectory()
		}
		st.Directory = d.clone()
	} else if err := st.Directory.validate(); err != nil {
		return nil, fmt.Errorf("restored directory: %w", err)
	}
	if st.Lifetime <= 0 {
		st.Lifetime = cfg.TokenLifetime
	}
	if st.Lifetime <= 0 {
		st.Lifetime = DefaultTokenLifetime
	}
	for _, k := range st.Keys {
		if err := k.load(); err != nil {
			return nil, err
		}
	}
	if len(st.Keys) == 0 {
		k, err := newSigningKey()
		if err != nil {
			return nil, err
		}
		st.Keys = []*signingKey{k}
	}
	initMaps(st)
	e.st = st
	e.dir = st.Directory
	e.faults.cleared = make(chan struct{})
	e.handler = e.routes()
	return e, nil
}

func initMaps(st *State) {
	if st.Refresh == nil {
		st.Refresh = map[string]*refreshRecord{}
	}
	if st.RevokedFamilies == nil {
		st.RevokedFamilies = map[string]bool{}
	}
	if st.UserRevokedAt == nil {
		st.UserRevokedAt = map[string]time.Time{}
	}
	if st.ReauthSince == nil {
		st.ReauthSince = map[string]time.Time{}
	}
	if st.UsedJTIs == nil {
		st.UsedJTIs = map[string]time.Time{}
	}
}

// Snapshot returns a deep copy of the state worth keeping across a restart.
func (e *Emulator) Snapshot() *State {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := *e.st
	c.Directory = e.dir.clone()
	c.Keys = append([]*signingKey(nil), e.st.Keys...)
	c.Refresh = make(map[string]*refreshRecord, len(e.st.Refresh))
	for k, v := range e.st.Refresh {
		r := *v
		c.Refresh[k] = &r
	}
	c.RevokedFamilies = cloneMap(e.st.RevokedFamilies)
	c.UserRevokedAt = cloneMap(e.st.UserRevokedAt)
	c.ReauthSince = cloneMap(e.st.ReauthSince)
	c.UsedJTIs = cloneMap(e.st.UsedJTIs)
	return &c
}

func cloneMap[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// Close releases requests held by a "hang" fault so that a server shutdown does not wait for them.
func (e *Emulator) Close() {
	e.once.Do(func() { close(e.closing) })
}

// now is the emulator's clock: wall time plus the admin-set offset.
func (e *Emulator) now() time.Time {
	e.mu.Lock()
	off := e.st.ClockOffset
	e.mu.Unlock()
	return time.Now().Add(off)
}

func (e *Emulator) nowLocked() time.Time { return time.Now().Add(e.st.ClockOffset) }

// Issuer is the v2 issuer of this tenant.
func (e *Emulator) Issuer() string { return e.base + "/" + e.dir.Tenant.ID + "/v2.0" }

// TenantID is the tenant's id.
func (e *Emulator) TenantID() string { return e.dir.Tenant.ID }

func (e *Emulator) tokenEndpoint(tenant string) string {
	return e.base + "/" + tenant + "/oauth2/v2.0/token"
}

func (e *Emulator) ServeHTTP(w http.ResponseWriter, r *http.Request) { e.handler.ServeHTTP(w, r) }

func (e *Emulator) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /common/discovery/instance", e.handleInstance)
	mux.HandleFunc("GET /{tenant}/v2.0/.well-known/openid-configuration", e.handleOIDC)
	mux.HandleFunc("GET /{tenant}/discovery/v2.0/keys", e.handleKeys)
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/token", e.handleToken)
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/devicecode", e.handleDeviceCode)
	mux.HandleFunc("/{tenant}/oauth2/v2.0/deviceauth", e.handleDeviceAuth)
	mux.HandleFunc("/{tenant}/oauth2/v2.0/authorize", e.handleAuthorize)
	mux.HandleFunc("GET /error", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "entra-emulator: error code %s. See docs/emulator.md.\n", r.URL.Query().Get("code"))
	})
	return e.middleware(mux)
}

// endpointName labels a path for counters and faults.
func endpointName(path string) string {
	switch {
	case strings.HasPrefix(path, "/_admin/"):
		return "admin"
	case strings.HasSuffix(path, "/discovery/instance"):
		return "instance"
	case strings.HasSuffix(path, "/openid-configuration"):
		return "openid"
	case strings.HasSuffix(path, "/discovery/v2.0/keys"):
		return "keys"
	case strings.HasSuffix(path, "/oauth2/v2.0/token"):
		return "token"
	case strings.HasSuffix(path, "/oauth2/v2.0/devicecode"):
		return "devicecode"
	case strings.HasSuffix(path, "/oauth2/v2.0/deviceauth"):
		return "deviceauth"
	case strings.HasSuffix(path, "/oauth2/v2.0/authorize"):
		return "authorize"
	}
	return "other"
}

// maxForm caps request bodies; Entra refuses far smaller ones than this anyway.
const maxForm = 1 << 20

func (e *Emulator) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ep := endpointName(r.URL.Path)
		if ep == "admin" {
			e.handleAdmin(w, r)
			return
		}
		var grant, client string
		if r.Method == http.MethodPost && r.Body != nil {
			body, err := io.ReadAll(io.LimitReader(r.Body, maxForm+1))
			if err != nil {
				e.writeError(w, r, errInvalidRequest("The request body could not be read."))
				return
			}
			if len(body) > maxForm {
				e.writeError(w, r, errInvalidRequest("The request body is too large."))
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			if ep == "token" || ep == "devicecode" {
				// Parse a copy: the handler parses the body itself and must see any syntax error.
				if v, err := url.ParseQuery(string(body)); err == nil {
					grant, client = v.Get("grant_type"), v.Get("client_id")
				}
			}
		}
		e.counter.record(ep, grant, client, time.Now())
		if f, cleared := e.faults.match(ep, grant); f != nil {
			if e.applyFault(w, r, f, cleared) {
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (e *Emulator) checkTenant(w http.ResponseWriter, r *http.Request) (string, bool) {
	t := r.PathValue("tenant")
	if strings.EqualFold(t, e.dir.Tenant.ID) || strings.EqualFold(t, e.dir.Tenant.Name) {
		return t, true
	}
	e.writeError(w, r, newErr(400, "invalid_request", 90002, "Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.", t))
	return "", false
}

func (e *Emulator) handleInstance(w http.ResponseWriter, r *http.Request) {
	host := strings.TrimPrefix(e.base, "https://")
	writeJSON(w, 200, map[string]any{
		"tenant_discovery_endpoint": e.base + "/" + e.dir.Tenant.ID + "/v2.0/.well-known/openid-configuration",
		"api-version":               "1.1",
		"metadata": []map[string]any{{
			"preferred_network": host, "preferred_cache": host, "aliases": []string{host},
		}},
	})
}

func (e *Emulator) handleOIDC(w http.ResponseWriter, r *http.Request) {
	t, ok := e.checkTenant(w, r)
	if !ok {
		return
	}
	p := e.base + "/" + t
	writeJSON(w, 200, map[string]any{
		"issuer":                                e.Issuer(),
		"token_endpoint":                        p + "/oauth2/v2.0/token",
		"authorization_endpoint":                p + "/oauth2/v2.0/authorize",
		"device_authorization_endpoint":         p + "/oauth2/v2.0/devicecode",
		"jwks_uri":                              p + "/discovery/v2.0/keys",
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt"},
		"response_types_supported":              []string{"code"},
		"response_modes_supported":              []string{"query", "form_post"},
		"scopes_supported":                      []string{"openid", "profile", "email", "offline_access"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"code_challenge_methods_supported":      []string{"S256"},
		"claims_supported":                      []string{"sub", "iss", "aud", "exp", "iat", "nbf", "name", "oid", "tid", "preferred_username", "nonce"},
		"tenant_region_scope":                   "EU",
		"cloud_instance_name":                   strings.TrimPrefix(e.base, "https://"),
		"request_uri_parameter_supported":       false,
		"userinfo_endpoint":                     e.base + "/oidc/userinfo",
		"end_session_endpoint":                  p + "/oauth2/v2.0/logout",
	})
}

func (e *Emulator) handleKeys(w http.ResponseWriter, r *http.Request) {
	if _, ok := e.checkTenant(w, r); !ok {
		return
	}
	e.mu.Lock()
	keys := make([]map[string]any, 0, len(e.st.Keys))
	for _, k := range e.st.Keys {
		keys = append(keys, k.jwk())
	}
	e.mu.Unlock()
	writeJSON(w, 200, map[string]any{"keys": keys})
}
