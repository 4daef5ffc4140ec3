package client

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentidd/agentidd/ipc"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

var testExpiry = time.Unix(1_900_000_000, 0).UTC()

type fakeDaemon struct {
	agentidv1.UnimplementedAgentIdentityServer
	mu   sync.Mutex
	reqs []*agentidv1.GetTokenRequest
}

func (f *fakeDaemon) GetToken(_ context.Context, in *agentidv1.GetTokenRequest) (*agentidv1.GetTokenResponse, error) {
	f.mu.Lock()
	f.reqs = append(f.reqs, in)
	f.mu.Unlock()
	if in.GetAgent() != "good-agent" {
		return nil, status.Error(codes.PermissionDenied, "not attested")
	}
	return &agentidv1.GetTokenResponse{AccessToken: "at-" + in.GetScopes()[0], ExpiresAt: timestamppb.New(testExpiry)}, nil
}

func (f *fakeDaemon) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}

func (f *fakeDaemon) last() *agentidv1.GetTokenRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reqs[len(f.reqs)-1]
}

func startFake(t *testing.T) (*Conn, *fakeDaemon) {
	t.Helper()
	dir, err := os.MkdirTemp("", "aiddc-") // short: sun_path is 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s.sock")
	ln, err := ipc.Listen(path)
	if err != nil {
		t.Skipf("no local endpoint on this OS: %v", err)
	}
	srv := grpc.NewServer(grpc.Creds(ipc.ServerCredentials()))
	f := &fakeDaemon{}
	agentidv1.RegisterAgentIdentityServer(srv, f)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, f
}

func TestTokenSource(t *testing.T) {
	c, f := startFake(t)
	tests := []struct {
		agent   string
		wantErr codes.Code
	}{
		{"good-agent", codes.OK},
		{"bad-agent", codes.PermissionDenied},
	}
	for _, tt := range tests {
		tok, err := c.TokenSource(tt.agent, []string{"api://r/S"}, WithTask("t1")).Token()
		if status.Code(err) != tt.wantErr {
			t.Fatalf("%s: err %v, want %v", tt.agent, err, tt.wantErr)
		}
		if tt.wantErr != codes.OK {
			if tok != nil {
				t.Fatalf("%s: token returned with an error", tt.agent)
			}
			continue
		}
		if tok.AccessToken != "at-api://r/S" || tok.TokenType != "Bearer" || !tok.Expiry.Equal(testExpiry) || !tok.Valid() {
			t.Fatalf("token = %+v", tok)
		}
		if r := f.last(); r.GetTaskId() != "t1" || !slices.Equal(r.GetScopes(), []string{"api://r/S"}) {
			t.Fatalf("daemon got %v", r)
		}
	}
}

func TestCredential(t *testing.T) {
	c, f := startFake(t)
	cred := c.Credential("good-agent", WithJustification("why"))
	tests := []struct {
		name    string
		opts    policy.TokenRequestOptions
		wantErr bool
		claims  string
	}{
		{name: "scopes", opts: policy.TokenRequestOptions{Scopes: []string{"api://r/.default"}}},
		{name: "claims challenge", opts: policy.TokenRequestOptions{Scopes: []string{"api://r/.default"}, Claims: `{"access_token":{}}`}, claims: `{"access_token":{}}`},
		{name: "no scopes", opts: policy.TokenRequestOptions{}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := f.count()
			tok, err := cred.GetToken(context.Background(), tt.opts)
			if tt.wantErr {
				if err == nil || f.count() != n {
					t.Fatalf("err %v, %d daemon calls; want an error and no call", err, f.count()-n)
				}
				return
			}
			if err != nil || tok.Token != "at-api://r/.default" || !tok.ExpiresOn.Equal(testExpiry) {
				t.Fatalf("GetToken = %+v, %v", tok, err)
			}
			if r := f.last(); r.GetClaims() != tt.claims || r.GetJustification() != "why" {
				t.Fatalf("daemon got claims %q justification %q", r.GetClaims(), r.GetJustification())
			}
		})
	}
	if _, err := c.Credential("bad-agent").GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{"api://r/.default"}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("refused agent: %v", err)
	}
}

// The oauth2 adapter's own deadline must outlast the consent wait it asks the daemon for.
func TestAdapterTimeoutCoversTheConsentWait(t *testing.T) {
	if got := adapterTimeout(nil); got != tokenTimeout {
		t.Errorf("without a consent wait: %v, want %v", got, tokenTimeout)
	}
	if got := adapterTimeout([]Option{WithJustification("x"), WithConsentWait(2 * time.Minute)}); got != 2*time.Minute+tokenTimeout {
		t.Errorf("with a 2m consent wait: %v, want %v", got, 2*time.Minute+tokenTimeout)
	}
}

type staticCred string

func (s staticCred) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(s), ExpiresOn: testExpiry}, nil
}

// A chain (azidentity.ChainedTokenCredential, as DefaultAzureCredential-style setups build) moves on only from a
// credential that says it is unavailable: no daemon is that, a daemon's refusal is not (the next credential could be the
// user's own token, which agentidd exists to keep from agents).
func TestCredentialInAChain(t *testing.T) {
	scopes := policy.TokenRequestOptions{Scopes: []string{"api://r/.default"}}
	dir, err := os.MkdirTemp("", "aiddc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	down, err := Dial(filepath.Join(dir, "none.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { down.Close() })
	up, _ := startFake(t)

	tests := []struct {
		name      string
		cred      azcore.TokenCredential
		wantToken string
		wantCode  codes.Code
	}{
		{name: "no daemon: the next credential answers", cred: down.Credential("good-agent"), wantToken: "next"},
		{name: "a refusal stops the chain", cred: up.Credential("bad-agent"), wantCode: codes.PermissionDenied},
		{name: "a token ends the chain", cred: up.Credential("good-agent"), wantToken: "at-api://r/.default"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := azidentity.NewChainedTokenCredential([]azcore.TokenCredential{tt.cred, staticCred("next")}, nil)
			if err != nil {
				t.Fatal(err)
			}
			tok, err := chain.GetToken(context.Background(), scopes)
			if tt.wantToken != "" {
				if err != nil || tok.Token != tt.wantToken {
					t.Fatalf("chain: %q, %v; want %q", tok.Token, err, tt.wantToken)
				}
				return
			}
			if err == nil {
				t.Fatalf("chain fell through to %q after a refusal", tok.Token)
			}
			if _, err := tt.cred.GetToken(context.Background(), scopes); status.Code(err) != tt.wantCode {
				t.Fatalf("credential: %v, want %v", err, tt.wantCode)
			}
		})
	}
	// The unavailable error still carries the gRPC status for callers that switch on it.
	if _, err := down.Credential("good-agent").GetToken(context.Background(), scopes); status.Code(err) != codes.Unavailable {
		t.Fatalf("no daemon: %v, want the Unavailable status kept", err)
	}
}
