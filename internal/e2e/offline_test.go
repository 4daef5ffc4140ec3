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

// offlineToken asks for the test agent's token without waiting for consent: after a restart the grant must already be
// there, so a CONSENT_PENDING here is a failure, not something to approve.
func offlineToken(c *client.Conn, timeout time.Duration, opts ...client.Option) (*client.Issued, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.Token(ctx, testAgent, []string{emutest.ResourceScopeRead}, opts...)
}

// TestOfflineAcrossRestart: sign in, get a token, take the IdP away and restart the daemon. The valid token comes from
// the encrypted store at once; a request the cache cannot satisfy is UNAVAILABLE/IDP_UNREACHABLE with a retry delay;
// the sign-in and the grant survive; when the IdP is back the same daemon process serves misses again.
func TestOfflineAcrossRestart(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()
	first := e.tokenWithApproval(e.conn(), emutest.ResourceScopeRead)
	if first.FromCache {
		t.Fatal("the first token came from the cache")
	}

	e.emu.Stop()
	e.stopDaemon()
	e.startDaemon()
	pid := e.daemon.Process.Pid
	c := e.conn()

	start := time.Now()
	got, err := offlineToken(c, 5*time.Second)
	if err != nil {
		t.Fatalf("valid cached token after restart with the IdP down: %v\n%s", err, e.log.String())
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("cached token took %v with the IdP down; want it at once", took)
	}
	if !got.FromCache || got.AccessToken != first.AccessToken || got.GrantID != first.GrantID {
		t.Errorf("after restart: from_cache=%v same_token=%v grant=%q (want %q)", got.FromCache, got.AccessToken == first.AccessToken, got.GrantID, first.GrantID)
	}

	// A remaining lifetime the cached token cannot meet forces a fetch, and the IdP is down.
	start = time.Now()
	_, err = offlineToken(c, 20*time.Second, client.WithMinTTL(2*time.Hour))
	if status.Code(err) != codes.Unavailable || client.Reason(err) != "IDP_UNREACHABLE" {
		t.Fatalf("miss with the IdP down: %v (reason %q), want UNAVAILABLE/IDP_UNREACHABLE\n%s", err, client.Reason(err), e.log.String())
	}
	if d := client.RetryDelay(err); d <= 0 {
		t.Errorf("IDP_UNREACHABLE without a retry delay")
	}
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("IDP_UNREACHABLE took %v", took)
	}

	// Nothing was deleted because the IdP is down.
	st := e.cli("status")
	for _, want := range []string{"signed in: " + emutest.DefaultUserUPN, "grants: 1", "OFFLINE"} {
		if !strings.Contains(st, want) {
			t.Errorf("status with the IdP down lacks %q:\n%s", want, st)
		}
	}
	if again, err := offlineToken(c, 5*time.Second); err != nil || again.AccessToken != first.AccessToken {
		t.Errorf("the cached token is gone after the failed miss: %v", err)
	}

	// The IdP comes back on the same port, CA and state: the same daemon recovers by itself.
	e.emu.Restart()
	var fresh *agentidv1.GetTokenResponse
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		fresh, err = c.Agent.GetToken(ctx, &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{emutest.ResourceScopeRead}, ForceRefresh: true})
		cancel()
		if err == nil && fresh.GetSource() == agentidv1.TokenSource_TOKEN_SOURCE_IDP {
			break
		}
		// Backoff after the outage is expected; anything but UNAVAILABLE is not.
		if err != nil && status.Code(err) != codes.Unavailable {
			t.Fatalf("after the IdP came back: %v\n%s", err, e.log.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not recover within 30s of the IdP's return (last: %v)\n%s", err, e.log.String())
		}
		time.Sleep(250 * time.Millisecond)
	}
	if e.daemon.Process.Pid != pid {
		t.Fatal("the daemon was restarted; recovery must not need that")
	}
	if fresh.GetGrantId() != first.GrantID || fresh.GetAccessToken() == first.AccessToken {
		t.Errorf("after recovery: grant %q (want the one from before the outage, %q), new token=%v", fresh.GetGrantId(), first.GrantID, fresh.GetAccessToken() != first.AccessToken)
	}
	if c := e.counters(); c.Total == 0 {
		t.Errorf("the emulator saw no request after its restart")
	}
}
