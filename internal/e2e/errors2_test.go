package e2e

import (
	"context"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// TestErrors2UnknownResourceIsInvalidArgument: an agent asking for a scope of a resource the tenant does not have gets
// the IdP's AADSTS500011 (invalid_resource) back as INVALID_ARGUMENT, a request it can fix, not as INTERNAL, which
// tells it to report a bug in agentidd. Nothing else is touched: the daemon stays online and the agent's other token
// is still served.
func TestErrors2UnknownResourceIsInvalidArgument(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()
	c := e.conn()
	first := e.tokenWithApproval(c, emutest.ResourceScopeRead)

	const unknown = "api://unknown.contoso.example/Files.Read"
	type result struct{ err error }
	ch := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := c.Token(ctx, testAgent, []string{unknown}, client.WithConsentWait(20*time.Second))
		ch <- result{err}
	}()
	e.approvePending("1h")
	err := (<-ch).err
	if status.Code(err) != codes.InvalidArgument || client.Reason(err) != "INVALID_ARGUMENT" {
		t.Fatalf("token for an unknown resource: %v (reason %q), want INVALID_ARGUMENT\n%s", err, client.Reason(err), e.log.String())
	}
	if st, raw := lifecycleStatus(t, e); st["online"] != true {
		t.Errorf("status after an invalid request: %s", raw)
	}
	tok, err := offlineToken(c, 5*time.Second)
	if err != nil || tok.AccessToken != first.AccessToken || !tok.FromCache {
		t.Errorf("the agent's other token after an invalid request: %v", err)
	}
}

// errors2Fresh restarts the daemon after a case that left it offline: offline, a miss is answered without asking the
// IdP until the retry time (up to 30 s later), and the next case must see its own fault's answer. It checks that the
// following miss does reach the emulator.
func errors2Fresh(e *env, c *client.Conn, i int) *client.Conn {
	e.t.Helper()
	if i > 0 {
		e.stopDaemon()
		e.startDaemon()
		c = e.conn()
	}
	e.emu.ResetCounters()
	return c
}

func errors2Reached(t *testing.T, e *env) {
	t.Helper()
	if n := e.counters().ByEndpoint["token"]; n == 0 {
		t.Error("the miss did not reach the emulator")
	}
}

// errors2Miss forces an exchange for the test agent's token and returns its error.
func errors2Miss(c *client.Conn) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Agent.GetToken(ctx, &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{emutest.ResourceScopeRead}, ForceRefresh: true})
	return err
}

// TestErrors2ThrottleRetryAfter: a throttled exchange is UNAVAILABLE / IDP_UNREACHABLE and its retry delay honours the
// IdP's Retry-After in both forms. An HTTP-date (from an IdP whose clock is 20 minutes ahead of this machine's, as
// the emulator's Date header says) means the same delay as the seconds form; a day's Retry-After is capped at 5
// minutes, so one answer cannot tell agents to stay away for a day. The cached token is served throughout.
func TestErrors2ThrottleRetryAfter(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()
	c := e.conn()
	first := e.tokenWithApproval(c, emutest.ResourceScopeRead)
	e.emu.ShiftClock(20 * time.Minute)

	cases := []struct {
		name     string
		fault    emutest.Fault
		min, max time.Duration
	}{
		{"seconds", emutest.Fault{Endpoint: "token", Kind: "throttle", RetryAfter: 120}, 110 * time.Second, 121 * time.Second},
		{"http-date on a skewed clock", emutest.Fault{Endpoint: "token", Kind: "throttle", RetryAfter: 120, RetryAfterDate: true}, 110 * time.Second, 121 * time.Second},
		{"a day, capped", emutest.Fault{Endpoint: "token", Kind: "throttle", RetryAfter: 86400}, 4 * time.Minute, 5 * time.Minute},
		{"a day as a date, capped", emutest.Fault{Endpoint: "token", Kind: "throttle", RetryAfter: 86400, RetryAfterDate: true}, 4 * time.Minute, 5 * time.Minute},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c = errors2Fresh(e, c, i)
			if err := e.emu.InjectFault(tc.fault); err != nil {
				t.Fatal(err)
			}
			defer e.emu.ClearFaults()
			err := errors2Miss(c)
			if status.Code(err) != codes.Unavailable || client.Reason(err) != "IDP_UNREACHABLE" {
				t.Fatalf("throttled miss: %v (reason %q), want UNAVAILABLE / IDP_UNREACHABLE\n%s", err, client.Reason(err), e.log.String())
			}
			errors2Reached(t, e)
			if d := client.RetryDelay(err); d < tc.min || d > tc.max {
				t.Errorf("retry delay %v, want within [%v, %v]", d, tc.min, tc.max)
			}
			if tok, err := offlineToken(c, 5*time.Second); err != nil || tok.AccessToken != first.AccessToken {
				t.Errorf("cached token while throttled: %v", err)
			}
		})
	}
}

// TestErrors2ProxyPagesAreOffline: when a proxy or gateway answers instead of the IdP, with an HTML page or nothing,
// the IdP was not reached. The daemon says so (UNAVAILABLE / IDP_UNREACHABLE with a retry delay, status OFFLINE),
// keeps serving what it has cached, and purges nothing; it does not answer INTERNAL ("report a bug").
func TestErrors2ProxyPagesAreOffline(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login()
	c := e.conn()
	first := e.tokenWithApproval(c, emutest.ResourceScopeRead)

	for i, f := range []emutest.Fault{
		{Endpoint: "token", Kind: "status", Status: 403, Body: "html"},
		{Endpoint: "token", Kind: "status", Status: 407, Body: "empty"},
		{Endpoint: "token", Kind: "status", Status: 502, Body: "html"},
		{Endpoint: "token", Kind: "status", Status: 503, Body: "empty"},
	} {
		t.Run(strconv.Itoa(f.Status)+" "+f.Body, func(t *testing.T) {
			c = errors2Fresh(e, c, i)
			if err := e.emu.InjectFault(f); err != nil {
				t.Fatal(err)
			}
			defer e.emu.ClearFaults()
			err := errors2Miss(c)
			if status.Code(err) != codes.Unavailable || client.Reason(err) != "IDP_UNREACHABLE" || client.RetryDelay(err) <= 0 {
				t.Fatalf("miss behind the proxy: %v (reason %q, retry %v), want UNAVAILABLE / IDP_UNREACHABLE with a retry delay\n%s",
					err, client.Reason(err), client.RetryDelay(err), e.log.String())
			}
			errors2Reached(t, e)
			if st, raw := lifecycleStatus(t, e); st["online"] == true || st["last_idp_error_class"] != "transient" {
				t.Errorf("status behind the proxy: %s", raw)
			}
			if tok, err := offlineToken(c, 5*time.Second); err != nil || tok.AccessToken != first.AccessToken {
				t.Errorf("cached token behind the proxy: %v", err)
			}
		})
	}
}
