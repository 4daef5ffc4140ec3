package e2e

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// offline3Miss asks for scopes, forcing an exchange when force is set, and returns how long it took and the error.
func offline3Miss(c *client.Conn, scopes []string, force bool) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.Agent.GetToken(ctx, &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: scopes, ForceRefresh: force})
	return time.Since(start), err
}

func offline3TokenRequests(e *env) int { return e.counters().ByEndpoint["token"] }

func offline3WantUnavailable(t *testing.T, what string, err error, took time.Duration) time.Duration {
	t.Helper()
	if status.Code(err) != codes.Unavailable || client.Reason(err) != "IDP_UNREACHABLE" || client.RetryDelay(err) <= 0 {
		t.Fatalf("%s: %v (reason %q, retry %v), want UNAVAILABLE / IDP_UNREACHABLE with a retry delay", what, err, client.Reason(err), client.RetryDelay(err))
	}
	if took > time.Second {
		t.Errorf("%s took %v, want an answer at once", what, took)
	}
	return client.RetryDelay(err)
}

// TestOfflineMissBurstBacksOff: during a 503 outage, a burst of misses (force_refresh of a cached key and new keys)
// costs the IdP one request, not one each, and their retry delays stay at the first backoff step rather than growing
// with the number of requests. When the IdP is back, misses are served again within the first retry delay.
func TestOfflineMissBurstBacksOff(t *testing.T) {
	e := lifecycleEnv(t, 0)
	c := lifecycleReady(t, e)
	if _, err := c.Token(context.Background(), testAgent, lifecycleScopes[:1]); err != nil {
		t.Fatal(err)
	}
	if err := e.emu.InjectFault(emutest.Fault{Endpoint: "token", Kind: "status", Status: 503}); err != nil {
		t.Fatal(err)
	}
	defer e.emu.ClearFaults()
	e.emu.ResetCounters()

	var maxRetry time.Duration
	for i := range 10 {
		took, err := offline3Miss(c, lifecycleScopes[:1], true)
		maxRetry = max(maxRetry, offline3WantUnavailable(t, "force_refresh during the outage", err, took))
		took, err = offline3Miss(c, lifecycleScopes[1+i:2+i], false)
		maxRetry = max(maxRetry, offline3WantUnavailable(t, "miss of a new key during the outage", err, took))
	}
	n := offline3TokenRequests(e)
	t.Logf("20 misses during a 503 outage: %d token requests, largest retry delay %v", n, maxRetry)
	// One; a second if the burst outlasted the first retry time (0.5 to 1 s).
	if n < 1 || n > 2 {
		t.Errorf("token requests during the burst = %d, want 1 (2 at most)", n)
	}
	if maxRetry > 2*time.Second {
		t.Errorf("retry delay grew to %v over the burst, want the first backoff step (at most 2s)", maxRetry)
	}
	if _, err := offline3Miss(c, lifecycleScopes[:1], false); err != nil {
		t.Errorf("the cached token during the outage: %v", err)
	}

	e.emu.ClearFaults()
	back := time.Now()
	lifecycleEventually(t, 5*time.Second, func() error {
		_, err := offline3Miss(c, lifecycleScopes[11:12], false)
		return err
	})
	t.Logf("served again %v after the IdP came back", time.Since(back).Round(time.Millisecond))
	if st, raw := lifecycleStatus(t, e); st["online"] != true {
		t.Errorf("status after recovery: %s", raw)
	}
}

// TestOfflineMissHonoursRetryAfter: throttled with a Retry-After longer than the 30 s our own backoff keeps misses
// back, misses are answered from the offline state with the time left of it, and the IdP is not asked again before it
// ends, not even by the probe that would otherwise go at 30 s. Once it has passed, a miss reaches the recovered IdP.
func TestOfflineMissHonoursRetryAfter(t *testing.T) {
	const retryAfter = 35 * time.Second
	e := lifecycleEnv(t, 0)
	c := lifecycleReady(t, e)
	if err := e.emu.InjectFault(emutest.Fault{Endpoint: "token", Kind: "throttle", RetryAfter: int(retryAfter / time.Second)}); err != nil {
		t.Fatal(err)
	}
	defer e.emu.ClearFaults()
	e.emu.ResetCounters()

	start := time.Now()
	took, err := offline3Miss(c, lifecycleScopes[:1], true)
	if d := offline3WantUnavailable(t, "throttled miss", err, took); d < retryAfter-5*time.Second || d > retryAfter+time.Second {
		t.Errorf("retry delay %v, want the Retry-After (%v)", d, retryAfter)
	}
	misses := 1
	for time.Since(start) < 32*time.Second {
		took, err := offline3Miss(c, lifecycleScopes[misses%12:misses%12+1], misses%2 == 0)
		d := offline3WantUnavailable(t, "miss while throttled", err, took)
		if left := retryAfter - time.Since(start); d < left-5*time.Second || d > left+time.Second {
			t.Errorf("retry delay %v at %v, want the rest of the Retry-After (%v)", d, time.Since(start).Round(time.Second), left.Round(time.Second))
		}
		misses++
		time.Sleep(200 * time.Millisecond)
	}
	n := offline3TokenRequests(e)
	t.Logf("%d misses over %v while throttled: %d token requests", misses, time.Since(start).Round(time.Second), n)
	if n != 1 {
		t.Errorf("token requests = %d, want 1: nothing after the first miss within the Retry-After", n)
	}

	e.emu.ClearFaults()
	time.Sleep(time.Until(start.Add(retryAfter + time.Second)))
	if _, err := offline3Miss(c, lifecycleScopes[:1], true); err != nil {
		t.Fatalf("miss after the Retry-After: %v", err)
	}
}
