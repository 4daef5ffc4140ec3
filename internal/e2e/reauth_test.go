package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// TestReauthInteractionRequiredKeepsServing: a CAE re-authentication event at the IdP (AADSTS50133 interaction_required
// with a claims challenge) asks the user to act; it does not end the sign-in. docs/lifecycle.md: valid cached tokens
// are still served, nothing is purged or revoked, and misses answer FAILED_PRECONDITION/INTERACTION_REQUIRED with the
// claims, until the user signs in again.
func TestReauthInteractionRequiredKeepsServing(t *testing.T) {
	e := lifecycleEnv(t, 0)
	c := lifecycleReady(t, e)
	ctx := context.Background()
	first, err := c.Token(ctx, testAgent, lifecycleScopes[:1])
	if err != nil {
		t.Fatal(err)
	}
	sibling, err := c.Token(ctx, testAgent, lifecycleScopes[1:2])
	if err != nil {
		t.Fatal(err)
	}
	watchers := lifecycleWatchers(t, []*client.Conn{c}, 3, lifecycleScopes[1:2])

	e.emu.RequireReauth(emutest.DefaultUserUPN)
	reauthAt := time.Now()

	wantInteraction := func(what string, err error) {
		t.Helper()
		if status.Code(err) != codes.FailedPrecondition || client.Reason(err) != "INTERACTION_REQUIRED" {
			t.Fatalf("%s after the re-authentication event: %v / %q, want FailedPrecondition / INTERACTION_REQUIRED", what, err, client.Reason(err))
		}
		if claims := client.Metadata(err)["claims"]; !strings.Contains(claims, `"nbf"`) {
			t.Errorf("%s: claims metadata %q, want the IdP's challenge", what, claims)
		}
	}
	_, err = c.Agent.GetToken(ctx, &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: lifecycleScopes[:1], ForceRefresh: true})
	wantInteraction("forced refresh", err)
	_, err = c.Token(ctx, testAgent, lifecycleScopes[2:3])
	wantInteraction("a miss", err)

	for _, want := range []struct {
		scopes []string
		token  string
	}{{lifecycleScopes[:1], first.AccessToken}, {lifecycleScopes[1:2], sibling.AccessToken}} {
		tok, err := c.Token(ctx, testAgent, want.scopes)
		if err != nil || tok.AccessToken != want.token || !tok.FromCache {
			t.Errorf("cached token for %v after the re-authentication event: %v (from cache %v), want the still-valid token served",
				want.scopes, err, tok != nil && tok.FromCache)
		}
	}
	select {
	case r := <-watchers:
		t.Errorf("a watcher's stream ended (reason %q, err %v): an interaction request is not a revocation", r.reason, r.err)
	case <-time.After(500 * time.Millisecond):
	}
	st, raw := lifecycleStatus(t, e)
	if st["last_idp_error_class"] != "interaction_required" {
		t.Errorf("status last_idp_error_class = %v, want interaction_required: %s", st["last_idp_error_class"], raw)
	}
	if n, _ := st["cached_tokens"].(float64); n < 2 {
		t.Errorf("status cached_tokens = %v, want the valid tokens kept: %s", st["cached_tokens"], raw)
	}
	if out := e.cli("grants"); out == "no grants\n" {
		t.Error("the grant was revoked by an interaction request")
	}
	if log := e.log.String(); strings.Contains(log, "permanent identity provider failure") {
		t.Errorf("the daemon treated the re-authentication event as a lost sign-in:\n%s", log)
	}
	assertNoSecrets(t, raw, "agentidd status", first.AccessToken)

	// Signing in again mends it without a restart. The emulator compares whole seconds (docs/emulator.md): sign in
	// after the event's second.
	time.Sleep(time.Until(reauthAt.Truncate(time.Second).Add(1100 * time.Millisecond)))
	e.login()
	resp, err := c.Agent.GetToken(ctx, &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: lifecycleScopes[:1], ForceRefresh: true})
	if err != nil || resp.GetAccessToken() == first.AccessToken {
		t.Errorf("forced refresh after signing in again: %v (new token %v)", err, err == nil && resp.GetAccessToken() != first.AccessToken)
	}
}
