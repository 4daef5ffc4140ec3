// Package execenv is the managed-identity endpoint `agentidd exec` gives the process tree it starts, so unmodified
// Azure SDKs (azidentity, @azure/identity, azure-identity for Python...) get the agent's OBO token with no agentidd
// code in the agent.
//
// It speaks the Azure App Service protocol (version 2019-08-01): the SDKs find it through IDENTITY_ENDPOINT and
// IDENTITY_HEADER, send `GET <endpoint>?api-version=2019-08-01&resource=<resource>` with header X-IDENTITY-HEADER,
// and read access_token, expires_on (epoch seconds as a string), resource, token_type and client_id.
//
// The endpoint is plain HTTP on 127.0.0.1, reachable by every local process, so the header is only the first fence.
// Each request's TCP peer is looked up in the kernel's socket table (platform.FindTCPPeer) and must be the same user
// and inside the exec'd tree; the daemon then checks the tree again (Admin.LaunchToken) and runs the normal
// attestation, consent, cache and audit path for that process.
package execenv

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentidd/agentidd/platform"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// Environment variables the endpoint is announced through (the App Service names the Azure SDKs read).
const (
	EnvEndpoint = "IDENTITY_ENDPOINT"
	EnvHeader   = "IDENTITY_HEADER"
	// HeaderName carries IDENTITY_HEADER's value on every request.
	HeaderName = "X-IDENTITY-HEADER"
	// APIVersion is the only App Service protocol version served.
	APIVersion = "2019-08-01"
)

// maxAncestry bounds the local tree check, as the daemon's does.
const maxAncestry = 64

// TokenFunc asks the daemon for a token for callerPID, a process of the launch (Admin.LaunchToken). clientID, when not
// empty, is the identity the SDK asked for; the daemon refuses it before minting if it is not the agent's.
type TokenFunc func(ctx context.Context, callerPID int, clientID string, req *agentidv1.GetTokenRequest) (*agentidv1.GetTokenResponse, error)

// Options configures an Endpoint.
type Options struct {
	Agent string
	// Scopes, when set, are the delegated scopes asked for instead of <resource>/.default; every one must belong to
	// the requested resource.
	Scopes []string
	// ConsentWait is how long a first request waits for the user to approve the agent.
	ConsentWait time.Duration
	Token       TokenFunc
	// FindPeer and Inspector default to the platform's; tests replace them.
	FindPeer  func(client, server netip.AddrPort) (platform.TCPPeer, error)
	Inspector platform.ProcessInspector
	Log       *slog.Logger
}

// Endpoint is one exec's managed-identity endpoint.
type Endpoint struct {
	o      Options
	ln     net.Listener
	srv    *http.Server
	secret string
	uid    int

	mu      sync.Mutex
	rootPID int
	ready   chan struct{}
}

// Start listens on a random loopback port. Requests wait for Bind (the tree's root is known only after the command
// started with the endpoint's environment).
func Start(o Options) (*Endpoint, error) {
	if o.Token == nil || o.Agent == "" {
		return nil, errors.New("execenv: Agent and Token are required")
	}
	if o.FindPeer == nil {
		o.FindPeer = platform.FindTCPPeer
	}
	if o.Inspector == nil {
		o.Inspector = platform.NewProcessInspector()
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	var b [32]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("execenv: listening on loopback: %w", err)
	}
	e := &Endpoint{o: o, ln: ln, secret: hex.EncodeToString(b[:]), uid: os.Getuid(), ready: make(chan struct{})}
	// Any local user can connect to a loopback port: without read and idle deadlines, connections left open would pile
	// up until the exec process runs out of descriptors. No write deadline: an answer may wait for the user's consent.
	e.srv = &http.Server{Handler: e, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 10 * time.Second,
		IdleTimeout: idleTimeout, MaxHeaderBytes: 16 << 10, ErrorLog: slog.NewLogLogger(o.Log.Handler(), slog.LevelDebug)}
	go func() { _ = e.srv.Serve(ln) }()
	return e, nil
}

// URL is IDENTITY_ENDPOINT's value.
func (e *Endpoint) URL() string { return "http://" + e.ln.Addr().String() + "/" }

// Env returns the variables that point SDKs at the endpoint. IDENTITY_HEADER is a secret for the tree's eyes only.
func (e *Endpoint) Env() []string {
	return []string{EnvEndpoint + "=" + e.URL(), EnvHeader + "=" + e.secret}
}

// Bind names the tree's root; requests are served from then on. It may be called once.
func (e *Endpoint) Bind(rootPID int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.rootPID != 0 {
		return
	}
	e.rootPID = rootPID
	close(e.ready)
}

// Close stops serving; in-flight requests are cut off, as the tree they serve is gone.
func (e *Endpoint) Close() error { return e.srv.Close() }

// tokenResponse is the App Service protocol's success body.
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	ExpiresOn   string `json:"expires_on"`
	Resource    string `json:"resource"`
	TokenType   string `json:"token_type"`
	ClientID    string `json:"client_id"`
}

type errorResponse struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
}

func (e *Endpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodGet {
		writeError(w, http.StatusMethodNotAllowed, "invalid_request", "only GET is served")
		return
	}
	// A browser page cannot set the header without a preflight this endpoint never answers, but refuse anything that
	// says it came from a browser anyway.
	if r.Header.Get("Origin") != "" {
		writeError(w, http.StatusForbidden, "access_denied", "browser requests are refused")
		return
	}
	got := r.Header.Get(HeaderName)
	if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(e.secret)) != 1 {
		writeError(w, http.StatusUnauthorized, "access_denied", "missing or wrong "+HeaderName+" header (use the value of "+EnvHeader+")")
		return
	}
	q := r.URL.Query()
	if v := q.Get("api-version"); v != APIVersion {
		writeError(w, http.StatusBadRequest, "invalid_request", "api-version must be "+APIVersion)
		return
	}
	resource := q.Get("resource")
	if resource == "" || len(resource) > 256 {
		writeError(w, http.StatusBadRequest, "invalid_request", "resource is required, e.g. api://files.contoso.example")
		return
	}
	if q.Get("mi_res_id") != "" || q.Get("principal_id") != "" || q.Get("object_id") != "" {
		writeError(w, http.StatusBadRequest, "invalid_request", "agentidd exec serves one identity, the agent's; select it by client_id or not at all")
		return
	}
	scopes, err := e.scopesFor(resource)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_scope", err.Error())
		return
	}
	select {
	case <-e.ready:
	case <-r.Context().Done():
		return
	}
	pid, err := e.caller(r)
	if err != nil {
		e.o.Log.Warn("managed-identity request refused", "remote", r.RemoteAddr, "err", err)
		writeError(w, http.StatusForbidden, "access_denied", err.Error())
		return
	}
	req := &agentidv1.GetTokenRequest{Agent: e.o.Agent, Scopes: scopes,
		Justification: "managed-identity request from pid " + strconv.Itoa(pid) + " under agentidd exec"}
	if e.o.ConsentWait > 0 {
		req.ConsentWait = durationpb.New(e.o.ConsentWait)
	}
	resp, err := e.o.Token(r.Context(), pid, q.Get("client_id"), req)
	if err != nil {
		st := status.Convert(err)
		writeError(w, httpStatus(st.Code()), strings.ToLower(st.Code().String()), st.Message())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(tokenResponse{AccessToken: resp.GetAccessToken(),
		ExpiresOn: strconv.FormatInt(resp.GetExpiresAt().AsTime().Unix(), 10), Resource: resource,
		TokenType: "Bearer", ClientID: resp.GetPrincipal().GetAgentAppId()})
}

// scopesFor maps an App Service resource to delegated scopes: <resource>/.default (all the agent is consented for),
// or the fixed --scope list when it belongs to that resource.
func (e *Endpoint) scopesFor(resource string) ([]string, error) {
	base := strings.TrimRight(resource, "/")
	if len(e.o.Scopes) == 0 {
		return []string{base + "/.default"}, nil
	}
	for _, s := range e.o.Scopes {
		i := strings.LastIndexByte(s, '/')
		if i <= 0 || s[:i] != base {
			return nil, fmt.Errorf("agentidd exec was given scopes for another resource than %s", resource)
		}
	}
	return e.o.Scopes, nil
}

// caller names the process behind the request and checks it is ours: same uid, and every process holding the client
// socket is in the tree (a socket handed to an outsider would hand it the response).
func (e *Endpoint) caller(r *http.Request) (int, error) {
	client, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return 0, fmt.Errorf("unreadable peer address")
	}
	server, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return 0, fmt.Errorf("unknown local address")
	}
	srv, err := netip.ParseAddrPort(server.String())
	if err != nil {
		return 0, fmt.Errorf("unreadable local address")
	}
	peer, err := e.o.FindPeer(client, srv)
	if err != nil {
		return 0, fmt.Errorf("cannot identify the calling process: %w", err)
	}
	if len(peer.PIDs) == 0 {
		return 0, fmt.Errorf("cannot identify the calling process")
	}
	if e.uid >= 0 && peer.UID != e.uid {
		return 0, fmt.Errorf("the calling process runs as another user")
	}
	e.mu.Lock()
	root := e.rootPID
	e.mu.Unlock()
	for _, pid := range peer.PIDs {
		if !e.inTree(pid, root) {
			return 0, fmt.Errorf("process %d is not in this agentidd exec process tree", pid)
		}
	}
	return peer.PIDs[0], nil
}

func (e *Endpoint) inTree(pid, root int) bool {
	if pid == root {
		return true
	}
	anc, _ := e.o.Inspector.Ancestors(pid, maxAncestry)
	return slices.Contains(anc, root)
}

// httpStatus maps the daemon's answer to what the SDKs understand; none of them retries a 4xx except 429.
func httpStatus(c codes.Code) int {
	switch c {
	case codes.InvalidArgument, codes.NotFound:
		return http.StatusBadRequest
	case codes.PermissionDenied, codes.FailedPrecondition:
		return http.StatusForbidden
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Unavailable, codes.DeadlineExceeded:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func writeError(w http.ResponseWriter, code int, kind, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(errorResponse{Error: kind, Description: desc})
}

// idleTimeout closes a kept-alive connection no request follows on; a variable for tests.
var idleTimeout = 30 * time.Second
