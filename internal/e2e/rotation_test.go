package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

const rotatedSecret = "blueprint-rotated-secret-2"

// TestSecretRotationWhileRunning rotates the blueprint secret under a running daemon: the next exchange presents the
// new secret (the emulator accepts both during the rotation), a broken rotation is refused as AGENT_REJECTED without
// the secret in the message, and setting a working secret again recovers without a restart.
func TestSecretRotationWhileRunning(t *testing.T) {
	def, err := os.ReadFile(filepath.Join("..", "entraemu", "default_directory.json"))
	if err != nil {
		t.Fatal(err)
	}
	old := `"secrets": ["` + emutest.BlueprintSecret + `"]`
	if !strings.Contains(string(def), old) {
		t.Fatalf("default directory no longer has %s", old)
	}
	dir := filepath.Join(t.TempDir(), "directory.json")
	rotated := strings.Replace(string(def), old, `"secrets": ["`+emutest.BlueprintSecret+`", "`+rotatedSecret+`"]`, 1)
	if err := os.WriteFile(dir, []byte(rotated), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{directory: dir})
	e.login()
	c := e.conn()
	e.tokenWithApproval(c, emutest.ResourceScopeRead)
	forced := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{emutest.ResourceScopeRead}, ForceRefresh: true}
	blueprintCalls := func() int { return e.counters().ByClientID[emutest.BlueprintAppID] }

	// Without a rotation the blueprint's exchange token comes from MSAL's cache: no new blueprint request.
	before := blueprintCalls()
	if _, err := c.Agent.GetToken(context.Background(), forced); err != nil {
		t.Fatal(err)
	}
	if got := blueprintCalls(); got != before {
		t.Fatalf("blueprint called %d times without a rotation", got-before)
	}

	e.cliInput(rotatedSecret, "secret", "set", "--blueprint", emutest.BlueprintAppID)
	if _, err := c.Agent.GetToken(context.Background(), forced); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if got := blueprintCalls(); got != before+1 {
		t.Fatalf("the rotated secret was not presented: %d blueprint requests, want 1", got-before)
	}

	const wrong = "not-the-blueprint-secret"
	e.cliInput(wrong, "secret", "set", "--blueprint", emutest.BlueprintAppID)
	_, err = c.Agent.GetToken(context.Background(), forced)
	if status.Code(err) != codes.PermissionDenied || client.Reason(err) != "AGENT_REJECTED" {
		t.Fatalf("wrong secret: got %v / %q, want PermissionDenied / AGENT_REJECTED", err, client.Reason(err))
	}
	if strings.Contains(err.Error(), wrong) || strings.Contains(e.log.String(), wrong) {
		t.Error("the secret appears in the error or the daemon log")
	}

	e.cliInput(rotatedSecret, "secret", "set", "--blueprint", emutest.BlueprintAppID)
	tok, err := c.Agent.GetToken(context.Background(), forced)
	if err != nil || tok.GetAccessToken() == "" {
		t.Fatalf("after fixing the secret: %v", err)
	}
}
