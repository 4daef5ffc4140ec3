package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	"github.com/agentidd/agentidd/ipc"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// verifyToken checks the signature against the emulator's JWKS with go-jose and returns the claims.
func verifyToken(t *testing.T, e *env, token string) map[string]any {
	t.Helper()
	resp, err := e.emu.HTTPClient().Get(e.emu.Authority + "/discovery/v2.0/keys")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var jwks jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&jwks); err != nil {
		t.Fatal(err)
	}
	parsed, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	if len(parsed.Headers) != 1 {
		t.Fatalf("want one signature header")
	}
	keys := jwks.Key(parsed.Headers[0].KeyID)
	if len(keys) == 0 {
		t.Fatalf("kid %q not in JWKS", parsed.Headers[0].KeyID)
	}
	var std jwt.Claims
	claims := map[string]any{}
	if err := parsed.Claims(keys[0].Key, &std, &claims); err != nil {
		t.Fatalf("signature does not verify: %v", err)
	}
	if err := std.ValidateWithLeeway(jwt.Expected{Issuer: e.emu.Authority + "/v2.0", Time: time.Now()}, time.Minute); err != nil {
		t.Fatalf("claims: %v", err)
	}
	return claims
}

func TestOBOTokenEndToEnd(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()
	c := e.conn()

	tok := e.tokenWithApproval(c, emutest.ResourceScopeRead)
	if tok.FromCache {
		t.Fatal("first token came from the cache")
	}
	claims := verifyToken(t, e, tok.AccessToken)
	if claims["oid"] != emutest.DefaultUserOID || claims["sub"] != emutest.DefaultUserOID {
		t.Errorf("subject: oid=%v sub=%v, want the user %s", claims["oid"], claims["sub"], emutest.DefaultUserOID)
	}
	if claims["azp"] != emutest.AgentAppID {
		t.Errorf("actor: azp=%v, want the agent identity %s", claims["azp"], emutest.AgentAppID)
	}
	if claims["aud"] != emutest.ResourceAppID || claims["scp"] != "Files.Read" {
		t.Errorf("aud=%v scp=%v", claims["aud"], claims["scp"])
	}
	if tok.UserOID != emutest.DefaultUserOID || tok.AgentAppID != emutest.AgentAppID || tok.AgentName != testAgent {
		t.Errorf("response principals: %+v", tok)
	}

	before := e.counters().Total
	again, err := c.Token(context.Background(), testAgent, []string{emutest.ResourceScopeRead})
	if err != nil {
		t.Fatal(err)
	}
	if !again.FromCache || again.AccessToken != tok.AccessToken {
		t.Errorf("second call: from cache %v, same token %v", again.FromCache, again.AccessToken == tok.AccessToken)
	}
	if after := e.counters().Total; after != before {
		t.Errorf("second call reached the emulator: %d → %d requests", before, after)
	}

	// The CLI path: `agentidd token --json` from an unbound binary is refused, naming what was checked.
	out, err := e.cliErr("", "token", "--agent", testAgent, "--scope", emutest.ResourceScopeRead, "--json")
	if err == nil || !strings.Contains(out, "NOT_ATTESTED") {
		t.Errorf("agentidd token from an unbound binary: err=%v out=%s", err, out)
	}

	e.stopDaemon()
	assertNoSecrets(t, e.log.String(), "daemon log", tok.AccessToken, emutest.BlueprintSecret, emutest.DefaultUserPassword)
}

// assertNoSecrets fails if any secret (or a long piece of it) shows up in text.
func assertNoSecrets(t *testing.T, text, where string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s == "" {
			continue
		}
		probe := s
		if len(probe) > 40 {
			probe = probe[len(probe)-40:] // a JWT's signature part: unique to this token
		}
		if strings.Contains(text, probe) {
			t.Errorf("%s contains a secret (%d bytes matched)", where, len(probe))
		}
	}
}

func TestSocketPermissionsAndOtherUID(t *testing.T) {
	e := newEnv(t, envOptions{})
	st, err := os.Stat(e.socket)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Errorf("socket mode %v, want srw-------", st.Mode())
	}
	dir, err := os.Stat(strings.TrimSuffix(e.socket, "/agentidd.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if dir.Mode().Perm() != 0o700 {
		t.Errorf("socket dir mode %v, want drwx------", dir.Mode())
	}
	if os.Getuid() != 0 {
		t.Skip("the other-uid check needs root to run a child as another uid")
	}
	// Open the path up for this test only, so that the daemon's own uid check (not file permissions) must refuse.
	for _, p := range []string{e.dir, strings.TrimSuffix(e.socket, "/agentidd.sock")} {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(e.socket, 0o666); err != nil {
		t.Fatal(err)
	}
	// rawdial skips the client library's own same-user check, so what answers is the daemon's uid check.
	cmd := exec.Command(filepath.Join(filepath.Dir(e.demo), "rawdial"), e.socket, "demo-agent", emutest.ResourceScopeRead)
	asNobody(cmd)
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "PermissionDenied" {
		t.Fatalf("client as uid 65534: err=%v output=%s", err, out)
	}
}

func TestBadInputKeepsServing(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()
	c := e.conn()
	ctx := context.Background()
	cases := []struct {
		name   string
		req    *agentidv1.GetTokenRequest
		code   codes.Code
		reason string
	}{
		{"unknown agent", &agentidv1.GetTokenRequest{Agent: "nobody", Scopes: []string{emutest.ResourceScopeRead}}, codes.NotFound, "UNKNOWN_AGENT"},
		{"no agent", &agentidv1.GetTokenRequest{Scopes: []string{emutest.ResourceScopeRead}}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"no scopes", &agentidv1.GetTokenRequest{Agent: testAgent}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"empty scope", &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{""}}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"unqualified scope", &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{"Files.Read"}}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"scope with space", &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{"api://x/a b"}}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"two resources", &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{"api://x/A", "api://y/B"}}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"reserved scope", &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{"offline_access"}}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"app mode needs .default", &agentidv1.GetTokenRequest{Agent: testAgent, Mode: agentidv1.Mode_MODE_APP, Scopes: []string{emutest.ResourceScopeRead}}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"bad claims", &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{emutest.ResourceScopeRead}, Claims: "not json"}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"unknown mode", &agentidv1.GetTokenRequest{Agent: testAgent, Mode: 42, Scopes: []string{emutest.ResourceScopeRead}}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"unbound agent", &agentidv1.GetTokenRequest{Agent: "demo-agent", Scopes: []string{emutest.ResourceScopeRead}}, codes.PermissionDenied, "NOT_ATTESTED"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Agent.GetToken(ctx, tc.req)
			if status.Code(err) != tc.code || client.Reason(err) != tc.reason {
				t.Errorf("got %v / %q, want %v / %q", status.Code(err), client.Reason(err), tc.code, tc.reason)
			}
		})
	}

	t.Run("missing guard header", func(t *testing.T) {
		raw, err := grpc.NewClient("passthrough:///agentidd",
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return ipc.Dial(ctx, e.socket) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		_, err = agentidv1.NewAgentIdentityClient(raw).GetToken(ctx, &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{emutest.ResourceScopeRead}})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("got %v, want InvalidArgument", err)
		}
	})

	t.Run("1 MiB request", func(t *testing.T) {
		_, err := c.Agent.GetToken(ctx, &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{emutest.ResourceScopeRead}, Justification: strings.Repeat("x", 1<<20)})
		if status.Code(err) != codes.ResourceExhausted {
			t.Errorf("got %v, want ResourceExhausted", err)
		}
	})

	t.Run("garbage on the socket", func(t *testing.T) {
		conn, err := net.Dial("unix", e.socket)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\x00\xff"))
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, _ = io.ReadAll(conn)
		conn.Close()
	})

	// Still serving: a valid request works after all of the above.
	tok := e.tokenWithApproval(c, emutest.ResourceScopeRead)
	if tok.AccessToken == "" {
		t.Fatal("no token after bad input")
	}
}

func TestIdPDownGivesUnavailableWithinDeadline(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()
	c := e.conn()
	first := e.tokenWithApproval(c, emutest.ResourceScopeRead)

	t.Run("hang", func(t *testing.T) {
		if err := e.emu.InjectFault(emutest.Fault{Kind: "hang"}); err != nil {
			t.Fatal(err)
		}
		defer e.emu.ClearFaults()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		start := time.Now()
		_, err := c.Agent.GetToken(ctx, &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{emutest.ResourceScopeRead}, ForceRefresh: true})
		if took := time.Since(start); took >= 2*time.Second {
			t.Errorf("call took %v: the daemon must answer before the caller's 2s deadline", took)
		}
		if status.Code(err) != codes.Unavailable || client.Reason(err) != "IDP_UNREACHABLE" || client.RetryDelay(err) <= 0 {
			t.Errorf("got %v / %q / retry %v, want Unavailable / IDP_UNREACHABLE with a retry delay", err, client.Reason(err), client.RetryDelay(err))
		}
		// The valid cached token is still served while the IdP hangs.
		tok, err := c.Token(context.Background(), testAgent, []string{emutest.ResourceScopeRead})
		if err != nil || tok.AccessToken != first.AccessToken {
			t.Errorf("cached token not served during the outage: %v", err)
		}
	})

	t.Run("stopped", func(t *testing.T) {
		e.emu.Stop()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err := c.Agent.GetToken(ctx, &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{emutest.ResourceScopeRead}, ForceRefresh: true})
		if status.Code(err) != codes.Unavailable || client.Reason(err) != "IDP_UNREACHABLE" {
			t.Fatalf("got %v / %q, want Unavailable / IDP_UNREACHABLE", err, client.Reason(err))
		}
		if d := client.RetryDelay(err); d <= 0 {
			t.Errorf("no retry hint: %v", d)
		}
		tok, err := c.Token(context.Background(), testAgent, []string{emutest.ResourceScopeRead})
		if err != nil || !tok.FromCache {
			t.Errorf("cached token not served with the IdP down: %v", err)
		}
	})
}
