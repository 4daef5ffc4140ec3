package daemon_test

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/agentidd/agentidd/internal/audit"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// findRecord returns the first record of event with outcome among records.
func findRecord(records []audit.Record, event, outcome string) (audit.Record, bool) {
	for _, r := range records {
		if r.Event == event && r.Outcome == outcome {
			return r, true
		}
	}
	return audit.Record{}, false
}

// TestLaunchAndResetAreRecorded: an `agentidd exec` launch lends an agent's identity to a process tree and a consent
// reset lets refused agents prompt again at once; both are decisions, so each leaves a record naming the admin caller
// (this test process plays the exec CLI), and a refused registration is recorded too.
func TestLaunchAndResetAreRecorded(t *testing.T) {
	c := lifecycleDaemon(t)
	ctx := context.Background()
	mark := lastAuditSeq(t, c)

	root := exec.Command("sleep", "60")
	if err := root.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = root.Process.Kill(); _ = root.Wait() })
	reg, err := c.Admin.RegisterLaunch(ctx, &agentidv1.RegisterLaunchRequest{Agent: lifecycleAgent, RootPid: int32(root.Process.Pid)})
	if err != nil {
		t.Fatal(err)
	}
	// pid 1 is nobody's child: refused.
	if _, err := c.Admin.RegisterLaunch(ctx, &agentidv1.RegisterLaunchRequest{Agent: lifecycleAgent, RootPid: 1}); err == nil {
		t.Fatal("registering pid 1 as a launch was allowed")
	}
	if _, err := c.Admin.EndLaunch(ctx, &agentidv1.EndLaunchRequest{LaunchId: reg.GetLaunchId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Admin.ResetConsent(ctx, &agentidv1.ResetConsentRequest{}); err != nil {
		t.Fatal(err)
	}

	records := auditSince(t, c, mark)
	me := os.Getpid()
	checkPeer := func(what string, r audit.Record) {
		t.Helper()
		if r.Peer.PID != me || r.Peer.UID == "" || r.Peer.Exe == "" {
			t.Errorf("%s: peer %+v, want pid %d with its uid and executable", what, r.Peer, me)
		}
		if r.User.UPN != emutest.DefaultUserUPN {
			t.Errorf("%s: user %+v, want the signed-in %s", what, r.User, emutest.DefaultUserUPN)
		}
	}
	if r, ok := findRecord(records, audit.EventLaunchRegistered, audit.OutcomeOK); !ok {
		t.Errorf("no %s ok record in %+v", audit.EventLaunchRegistered, records)
	} else {
		checkPeer("registered", r)
		if r.LaunchID != reg.GetLaunchId() || r.RootPID != root.Process.Pid || r.Agent.Name != lifecycleAgent || r.Agent.AppID != emutest.AgentAppID {
			t.Errorf("registered: %+v, want launch %s, root %d, agent %s", r, reg.GetLaunchId(), root.Process.Pid, lifecycleAgent)
		}
	}
	if r, ok := findRecord(records, audit.EventLaunchRegistered, audit.OutcomeDenied); !ok {
		t.Errorf("no %s denied record", audit.EventLaunchRegistered)
	} else {
		checkPeer("refused", r)
		if r.RootPID != 1 || r.LaunchID != "" || r.Reason == "" {
			t.Errorf("refused: %+v, want root 1, no launch id, a reason", r)
		}
	}
	if r, ok := findRecord(records, audit.EventLaunchEnded, audit.OutcomeOK); !ok {
		t.Errorf("no %s record", audit.EventLaunchEnded)
	} else {
		checkPeer("ended", r)
		if r.LaunchID != reg.GetLaunchId() || r.RootPID != root.Process.Pid || r.Agent.Name != lifecycleAgent {
			t.Errorf("ended: %+v, want launch %s", r, reg.GetLaunchId())
		}
	}
	if r, ok := findRecord(records, audit.EventConsentReset, audit.OutcomeOK); !ok {
		t.Errorf("no %s record", audit.EventConsentReset)
	} else {
		checkPeer("reset", r)
	}
}

// TestRecordsNameTaskUserAndAgent: a record must say on its own line whom and what it is about. A task-bound consent
// names its task, as does the revocation that ends it (with the user's UPN while that user is signed in), and the
// purge after an agent identity is refused names the local agent, not only the shared identity.
func TestRecordsNameTaskUserAndAgent(t *testing.T) {
	c, emu := lifecycleDaemonWith(t, lifecycleOptions{})
	ctx := context.Background()
	mark := lastAuditSeq(t, c)

	const task = "task-42"
	req := readRequest()
	req.TaskId = task
	approvedToken(t, c, req, 0) // 0: for this task only
	if ended, err := c.Agent.EndTask(ctx, &agentidv1.EndTaskRequest{TaskId: task}); err != nil || len(ended.GetRevokedGrantIds()) != 1 {
		t.Fatalf("EndTask: %v, revoked %v", err, ended.GetRevokedGrantIds())
	}
	records := auditSince(t, c, mark)
	if r, ok := findRecord(records, audit.EventConsentApproved, audit.OutcomeOK); !ok || r.TaskID != task {
		t.Errorf("consent record %+v (found %v), want task %s", r, ok, task)
	}
	if r, ok := findRecord(records, audit.EventGrantRevoked, audit.OutcomeOK); !ok {
		t.Errorf("no %s record after EndTask", audit.EventGrantRevoked)
	} else if r.TaskID != task || r.User.UPN != emutest.DefaultUserUPN || r.User.OID == "" {
		t.Errorf("revocation record %+v, want task %s and user %s", r, task, emutest.DefaultUserUPN)
	}

	approvedToken(t, c, readRequest(), time.Hour)
	mark = lastAuditSeq(t, c)
	emu.SetAgentEnabled(emutest.AgentAppID, false)
	if _, err := c.Agent.GetToken(ctx, missRequest(0)); err == nil {
		t.Fatal("a refused agent identity got a token")
	}
	if r, ok := findRecord(auditSince(t, c, mark), audit.EventPurge, audit.OutcomeOK); !ok {
		t.Error("no purge record after the agent identity was refused")
	} else if r.Agent.Name != lifecycleAgent || r.Agent.AppID != emutest.AgentAppID {
		t.Errorf("purge record agent %+v, want %s (%s)", r.Agent, lifecycleAgent, emutest.AgentAppID)
	}
}
