package consent

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// otherProgram is a second configured local agent that shares files-helper's Entra agent identity (app id).
func otherProgram() Request {
	r := baseReq()
	r.AgentName, r.AgentDisplayName = "other-helper", "Other Helper"
	r.Process = Process{PID: 43, ExePath: "/usr/bin/other", SHA256Prefix: "ef567890"}
	return r
}

// TestGrantBelongsToLocalAgent: the user approved the program the prompt named, not every program configured
// with the same app id.
func TestGrantBelongsToLocalAgent(t *testing.T) {
	m, _ := newTestManager(t, Options{})
	ctx := context.Background()

	_, err := m.Check(ctx, baseReq(), 0)
	idA := mustPending(t, err)
	_, err = m.Check(ctx, otherProgram(), 0)
	if idB := mustPending(t, err); idB == idA {
		t.Fatal("the other agent joined files-helper's request: one answer would decide for both programs")
	}
	g, err := m.Decide(idA, true, OneHour, "")
	if err != nil {
		t.Fatal(err)
	}
	if g.AgentName != "files-helper" {
		t.Fatalf("grant agent = %q", g.AgentName)
	}
	if got, err := m.Check(ctx, baseReq(), 0); err != nil || got.ID != g.ID {
		t.Fatalf("files-helper: Check = %v, %v; want grant %s", got.ID, err, g.ID)
	}
	if _, err := m.Check(ctx, otherProgram(), 0); !errors.As(err, new(*PendingError)) {
		t.Fatalf("other-helper: err = %v, want pending (files-helper's grant must not cover it)", err)
	}
}

// TestDenialBelongsToLocalAgent: a denial of one program neither blocks nor is escaped by a second name; it is
// per program like the grant it refused.
func TestDenialBelongsToLocalAgent(t *testing.T) {
	m, _ := newTestManager(t, Options{})
	ctx := context.Background()
	_, err := m.Check(ctx, baseReq(), 0)
	if _, err := m.Decide(mustPending(t, err), false, 0, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Check(ctx, baseReq(), 0); !errors.As(err, new(*DeniedError)) {
		t.Fatalf("files-helper: err = %v, want remembered denial", err)
	}
	if _, err := m.Check(ctx, otherProgram(), 0); !errors.As(err, new(*PendingError)) {
		t.Fatalf("other-helper: err = %v, want its own question", err)
	}
}

// TestStateWithoutAgentName: grants saved without the local agent's name cannot say which program the user
// approved, so none of them is loaded; denials saved without it block every agent of that app id until they end.
func TestStateWithoutAgentName(t *testing.T) {
	c := newClock()
	now := c.Now()
	old := baseReq()
	st := persisted{
		Version: stateVersion,
		Grants: []*Grant{{
			ID: "g_old", UserOID: old.UserOID, AgentAppID: old.AgentAppID, Mode: old.Mode, Resource: old.Resource,
			Scopes: old.Scopes, NotAfter: now.Add(time.Hour), CreatedAt: now, DecidedBy: DecidedByUser, DecidedVia: ViaTerminal,
		}},
		Denies: []deny{{
			UserOID: old.UserOID, AgentAppID: old.AgentAppID, Mode: old.Mode, Resource: "api://secret",
			Scopes: old.Scopes, Until: now.Add(5 * time.Minute), RequestID: "cr_old",
		}},
	}
	data, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewManager(Options{Persist: &memPersister{data: data}, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	if gs := m.Grants(); len(gs) != 0 {
		t.Fatalf("grant without an agent name loaded: %+v", gs)
	}
	ctx := context.Background()
	for _, r := range []Request{baseReq(), otherProgram()} {
		if _, err := m.Check(ctx, r, 0); !errors.As(err, new(*PendingError)) {
			t.Errorf("%s: err = %v, want a new question", r.AgentName, err)
		}
		r.Resource = "api://secret"
		if _, err := m.Check(ctx, r, 0); !errors.As(err, new(*DeniedError)) {
			t.Errorf("%s: err = %v, want the saved denial", r.AgentName, err)
		}
	}
}
