package broker

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/internal/audit"
	"github.com/agentidd/agentidd/internal/cache"
	"github.com/agentidd/agentidd/internal/config"
	"github.com/agentidd/agentidd/internal/consent"
	"github.com/agentidd/agentidd/ipc"
	"github.com/agentidd/agentidd/platform"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// A launch: agentidd (owner) started a shell (root), whose child (kid) runs the agent's code. The kid's exe is bound
// to nothing: it attests only through the launch.
const (
	launchOwner, launchOwnerStart = 5000, 50
	launchRoot, launchRootStart   = 5001, 51
	launchKid, launchKidStart     = 5002, 52
)

type launchInspector struct {
	mu       sync.Mutex
	rootGone bool
}

func (l *launchInspector) Inspect(pid int) (platform.Process, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case pid == launchOwner:
		return platform.Process{PID: pid, PPID: 1, ExePath: "/usr/bin/agentidd", StartTime: launchOwnerStart}, nil
	case pid == launchRoot && !l.rootGone:
		return platform.Process{PID: pid, PPID: launchOwner, ExePath: "/bin/sh", StartTime: launchRootStart}, nil
	case pid == launchKid:
		return platform.Process{PID: pid, PPID: launchRoot, ExePath: "/usr/bin/python3", StartTime: launchKidStart}, nil
	}
	return platform.Process{}, platform.ErrNoSuchProcess
}

func (l *launchInspector) ExeDigest(string) (string, error) { return "ff", nil }

func (l *launchInspector) Ancestors(pid, _ int) ([]int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if pid == launchKid && !l.rootGone {
		return []int{launchRoot, launchOwner, 1}, nil
	}
	return []int{1}, nil // orphaned: re-parented to init
}

type watchStream struct {
	grpc.ServerStream
	ctx    context.Context
	events chan *agentidv1.TokenEvent
}

func (s *watchStream) Context() context.Context            { return s.ctx }
func (s *watchStream) Send(ev *agentidv1.TokenEvent) error { s.events <- ev; return nil }

// launchBroker is a broker with one agent (bound to nothing) and one launch of it (owner, root, kid as above).
type launchBroker struct {
	*fixture
	ins *launchInspector
	l   Launch
}

func newLaunchBroker(t *testing.T) *launchBroker {
	t.Helper()
	ins := &launchInspector{}
	f := newTestBroker(t, []config.Agent{{Name: testAgent, AppID: testAppID}}, ins)
	l, err := f.b.RegisterLaunch(Launch{Agent: testAgent, RootPID: launchRoot, RootStart: launchRootStart, OwnerPID: launchOwner, OwnerStart: launchOwnerStart})
	if err != nil {
		t.Fatal(err)
	}
	return &launchBroker{fixture: f, ins: ins, l: l}
}

// TestWatchTokenEndsWithItsLaunch: a process attested only through an agentidd exec launch keeps no token stream once
// the launch has ended: the next refreshed token is not sent, and the stream ends NOT_ATTESTED.
func TestWatchTokenEndsWithItsLaunch(t *testing.T) {
	lb := newLaunchBroker(t)
	b, cm, c, ins, l := lb.b, lb.cm, lb.c, lb.ins, lb.l
	kid := ipc.ContextWithPeerForTest(context.Background(), ipc.NewPeerInfoForTest(0, 0, launchKid, "", launchKidStart, nil))
	req := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}
	if _, err := b.GetToken(kid, req); reasonOf(err) != ReasonConsentPending {
		t.Fatalf("first request: %v", err)
	}
	if _, err := cm.Decide(cm.Pending()[0].ID, true, time.Hour, consent.ViaTerminal); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(kid)
	defer cancel()
	stream := &watchStream{ctx: ctx, events: make(chan *agentidv1.TokenEvent, 8)}
	done := make(chan error, 1)
	go func() { done <- b.WatchToken(req, stream) }()
	if ev := <-stream.events; ev.GetToken().GetAccessToken() == "" {
		t.Fatalf("first event %v, want the current token", ev)
	}

	ins.mu.Lock()
	ins.rootGone = true // the launched command exited: the kid is an orphan now
	ins.mu.Unlock()
	b.EndLaunch(l.ID, "the launched process exited")
	var k cache.Key
	for _, e := range c.Snapshot() {
		k = e.Key
	}
	if _, _, err := c.Get(context.Background(), k, time.Minute, true); err != nil { // a refresh of the watched key
		t.Fatal(err)
	}
	select {
	case ev := <-stream.events:
		t.Fatalf("after the launch ended the orphan's stream got %v", ev)
	case err := <-done:
		if status.Code(err) != codes.PermissionDenied || reasonOf(err) != ReasonNotAttested {
			t.Fatalf("stream ended with %v, want PERMISSION_DENIED/NOT_ATTESTED", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stream neither ended nor sent")
	}
}

// An attestation decided before a reset (a reload, a launch ended) is not stored after it.
func TestAttestCacheDropsADecisionOlderThanAReset(t *testing.T) {
	a := newAttestCache(time.Now)
	k := attestKey{pid: 1, startTime: 2, agent: "a"}
	gen := a.generation()
	a.reset()
	a.put(k, attestEntry{at: time.Now()}, gen)
	if _, ok := a.get(k); ok {
		t.Fatal("a decision taken before the reset was stored after it")
	}
	a.put(k, attestEntry{at: time.Now()}, a.generation())
	if _, ok := a.get(k); !ok {
		t.Fatal("a current decision was not stored")
	}
}

// TestLaunchTokenRefusesAnotherClientID: an SDK in an exec tree that names another identity's client_id is refused
// before it can prompt the user or cost an exchange; the agent's own client_id (in any case) goes on as usual.
func TestLaunchTokenRefusesAnotherClientID(t *testing.T) {
	lb := newLaunchBroker(t)
	owner := ipc.NewPeerInfoForTest(0, 0, launchOwner, "", launchOwnerStart, nil)
	req := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}
	_, err := lb.b.LaunchToken(context.Background(), owner, lb.l.ID, launchKid, req, "00000000-0000-0000-0000-000000000000")
	if status.Code(err) != codes.InvalidArgument || reasonOf(err) != ReasonInvalidArgument {
		t.Fatalf("another client_id: %v, want INVALID_ARGUMENT", err)
	}
	if n := len(lb.cm.Pending()); n != 0 || lb.idp.calls.Load() != 0 {
		t.Fatalf("another client_id left %d consent requests and %d exchanges", n, lb.idp.calls.Load())
	}
	_, err = lb.b.LaunchToken(context.Background(), owner, lb.l.ID, launchKid, req, strings.ToUpper(testAppID))
	if reasonOf(err) != ReasonConsentPending {
		t.Fatalf("the agent's own client_id: %v, want CONSENT_PENDING", err)
	}
}

// A launch the daemon ends itself, because its command exited, is recorded like one the exec process ends: the audit
// log shows when the window its launch.registered record opened closed.
func TestLaunchEndNoticedIsRecorded(t *testing.T) {
	lb := newLaunchBroker(t)
	rec := &recordingAuditor{}
	lb.b.audit = rec
	lb.ins.mu.Lock()
	lb.ins.rootGone = true
	lb.ins.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, live := lb.b.LaunchByID(lb.l.ID); !live {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the launch outlived its command")
		}
		time.Sleep(50 * time.Millisecond)
	}
	var ends []audit.Record
	for _, r := range rec.all() {
		if r.Event == audit.EventLaunchEnded {
			ends = append(ends, r)
		}
	}
	if len(ends) != 1 {
		t.Fatalf("%d launch.ended records, want 1", len(ends))
	}
	if r := ends[0]; r.LaunchID != lb.l.ID || r.RootPID != launchRoot || r.Agent.Name != testAgent || r.Agent.AppID != testAppID ||
		r.User.OID != testUser || r.Outcome != audit.OutcomeOK || r.Reason != "the launched process exited" {
		t.Errorf("record %+v", r)
	}
}

// The records of a launched tree's requests name the launch, so the audit log ties each token to the launch.registered
// record (who ran `agentidd exec`, for which agent) that let the process attest.
func TestLaunchTreeRecordsNameTheLaunch(t *testing.T) {
	lb := newLaunchBroker(t)
	rec := &recordingAuditor{}
	lb.b.audit = rec
	kid := ipc.ContextWithPeerForTest(context.Background(), ipc.NewPeerInfoForTest(0, 0, launchKid, "", launchKidStart, nil))
	req := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}}
	if _, err := lb.b.GetToken(kid, req); reasonOf(err) != ReasonConsentPending {
		t.Fatalf("first request: %v", err)
	}
	if _, err := lb.cm.Decide(lb.cm.Pending()[0].ID, true, time.Hour, consent.ViaTerminal); err != nil {
		t.Fatal(err)
	}
	if _, err := lb.b.GetToken(kid, req); err != nil {
		t.Fatal(err)
	}
	records := rec.all()
	if len(records) != 2 {
		t.Fatalf("%d records, want the pending denial and the issue", len(records))
	}
	for _, r := range records {
		if r.LaunchID != lb.l.ID {
			t.Errorf("%s record names launch %q, want %q", r.Event, r.LaunchID, lb.l.ID)
		}
	}
}
