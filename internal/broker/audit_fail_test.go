package broker

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/internal/audit"
	"github.com/agentidd/agentidd/internal/entra"
	"github.com/agentidd/agentidd/ipc"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// recordingAuditor keeps every record it is given; with failIssued it refuses token.issued records as a log that can
// no longer write does.
type recordingAuditor struct {
	mu         sync.Mutex
	records    []audit.Record
	failIssued bool
}

func (a *recordingAuditor) Append(r audit.Record) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.failIssued && r.Event == audit.EventTokenIssued {
		return "", errors.New("write audit.jsonl: no space left on device")
	}
	a.records = append(a.records, r)
	return "1", nil
}

func (a *recordingAuditor) all() []audit.Record {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]audit.Record(nil), a.records...)
}

func (a *recordingAuditor) denials() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var reasons []string
	for _, r := range a.records {
		if r.Event == audit.EventTokenDenied {
			reasons = append(reasons, r.Reason)
		}
	}
	return reasons
}

// A token the audit log cannot record does not leave, cached or not, and after the first such failure nothing more is
// attempted: no consent prompt, no IdP exchange, until a restart.
func TestNoTokenLeavesUnrecorded(t *testing.T) {
	f := newFixture(t)
	req := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}
	if _, err := f.b.GetToken(peerCtx(testPID, testStart), req); err != nil {
		t.Fatal(err)
	}
	f.b.audit = &recordingAuditor{failIssued: true}
	resp, err := f.b.GetToken(peerCtx(testPID, testStart), req)
	if resp != nil || status.Code(err) != codes.FailedPrecondition || reasonOf(err) != ReasonAuditUnavailable {
		t.Fatalf("cached token with a broken audit log: %v, %v; want no token and FAILED_PRECONDITION/%s", resp, err, ReasonAuditUnavailable)
	}
	calls := f.idp.calls.Load()
	force := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}, ForceRefresh: true}
	if _, err := f.b.GetToken(peerCtx(testPID, testStart), force); reasonOf(err) != ReasonAuditUnavailable {
		t.Fatalf("after the failure: %v", err)
	}
	if f.idp.calls.Load() != calls {
		t.Errorf("the IdP was asked for a token that could not be issued")
	}
	if f.b.Degraded() == "" {
		t.Errorf("status does not show why no token is issued")
	}
}

// A token fetched for a caller that then exited is withheld, and that decision is recorded like any refusal.
func TestWithheldTokenIsRecorded(t *testing.T) {
	f := newFixture(t)
	rec := &recordingAuditor{}
	f.b.audit = rec
	before := f.idp.calls.Load()
	// Alive until the IdP has been asked: the caller exits while its token is being fetched.
	gone := func() error {
		if f.idp.calls.Load() > before {
			return ipc.ErrPeerGone
		}
		return nil
	}
	ctx := ipc.ContextWithPeerForTest(context.Background(), ipc.NewPeerInfoForTest(0, 0, testPID, "", testStart, gone))
	_, err := f.b.GetToken(ctx, &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}})
	if reasonOf(err) != ReasonPeerGone {
		t.Fatalf("got %v, want %s", err, ReasonPeerGone)
	}
	if got := rec.denials(); len(got) != 1 || got[0] != ReasonPeerGone {
		t.Errorf("denial records %q, want one %s", got, ReasonPeerGone)
	}
}

// A WatchToken refused after authorization (here: the IdP cannot be reached for its first token) is recorded.
func TestWatchTokenRefusalIsRecorded(t *testing.T) {
	f := newFixture(t)
	rec := &recordingAuditor{}
	f.b.audit = rec
	f.idp.err = &entra.Error{Class: entra.ClassTransient}
	ctx, cancel := context.WithTimeout(peerCtx(testPID, testStart), 5*time.Second)
	defer cancel()
	stream := &watchStream{ctx: ctx, events: make(chan *agentidv1.TokenEvent, 4)}
	err := f.b.WatchToken(&agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}, stream)
	if reasonOf(err) != ReasonIdPUnreachable {
		t.Fatalf("got %v, want %s", err, ReasonIdPUnreachable)
	}
	if got := rec.denials(); len(got) != 1 || got[0] != ReasonIdPUnreachable {
		t.Errorf("denial records %q, want one %s", got, ReasonIdPUnreachable)
	}
}
