package e2e

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
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
