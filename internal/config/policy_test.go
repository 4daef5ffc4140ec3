package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPolicy(t *testing.T) {
	dir := t.TempDir()
	write := func(text string) string {
		p := filepath.Join(dir, "policy.toml")
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const agentA, agentB = "c7d8e9f0-a1b2-4c3d-9e4f-5a6b7c8d9e0f", "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a"

	var none *Policy
	if ok, _ := none.Allows(agentA, "app", "api://x"); !ok {
		t.Error("a nil policy must allow everything")
	}
	missing, err := LoadPolicy(filepath.Join(dir, "absent.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := missing.Allows(agentA, "app", "api://x"); !ok {
		t.Error("a missing policy file must allow everything the config allows")
	}

	p, err := LoadPolicy(write(`allowed_agents = ["` + agentA + `"]
allowed_resources = ["api://files.contoso.example"]
deny_app_mode = true
max_grant = "8h"
`))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		agent, mode, resource string
		want                  bool
	}{
		{agentA, "obo", "api://files.contoso.example", true},
		{strings.ToUpper(agentA), "obo", "api://files.contoso.example", true},
		{agentB, "obo", "api://files.contoso.example", false},
		{agentA, "app", "api://files.contoso.example", false},
		{agentA, "obo", "api://mail.contoso.example", false},
	}
	for _, tc := range cases {
		if ok, why := p.Allows(tc.agent, tc.mode, tc.resource); ok != tc.want || (!ok && why == "") {
			t.Errorf("Allows(%s, %s, %s) = %v %q, want %v", tc.agent, tc.mode, tc.resource, ok, why, tc.want)
		}
	}
	if p.GrantCap() != 8*time.Hour {
		t.Errorf("cap %v", p.GrantCap())
	}

	for _, bad := range []string{`allowed_agnets = []`, `allowed_agents = ["nope"]`, `allowed_resources = ["files"]`, `max_grant = "forever"`} {
		if _, err := LoadPolicy(write(bad)); err == nil || !strings.Contains(err.Error(), dir) {
			t.Errorf("%s: got %v, want an error naming the file", bad, err)
		}
	}
	broken := BrokenPolicy("/etc/agentidd/policy.toml", errors.New("permission denied"))
	if ok, why := broken.Allows(agentA, "obo", "api://x"); ok || !strings.Contains(why, "permission denied") {
		t.Errorf("an unreadable policy must refuse everything and say why: %v %q", ok, why)
	}
}

// TestPolicyExcludesAgent: only a readable policy's allowed_agents decides that an agent is out (and loses its grants);
// an unreadable one refuses the agent without excluding it, so fixing the file needs no new consent.
func TestPolicyExcludesAgent(t *testing.T) {
	const agentA, agentB = "c7d8e9f0-a1b2-4c3d-9e4f-5a6b7c8d9e0f", "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a"
	broken := BrokenPolicy("/etc/agentidd/policy.toml", errors.New("allowed_agents: expected an array"))
	cases := []struct {
		name         string
		p            *Policy
		agent        string
		wantExcluded bool
		wantAllowed  bool
	}{
		{"no policy", nil, agentA, false, true},
		{"empty allowed_agents", &Policy{}, agentA, false, true},
		{"listed", &Policy{AllowedAgents: []string{agentA}}, strings.ToUpper(agentA), false, true},
		{"left out", &Policy{AllowedAgents: []string{agentA}}, agentB, true, false},
		{"unreadable", broken, agentA, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			excluded, why := c.p.ExcludesAgent(c.agent)
			if excluded != c.wantExcluded || excluded != (why != "") {
				t.Errorf("ExcludesAgent = %v %q, want %v with a reason when excluded", excluded, why, c.wantExcluded)
			}
			if ok, why := c.p.AllowsAgent(c.agent); ok != c.wantAllowed || ok != (why == "") {
				t.Errorf("AllowsAgent = %v %q, want %v with a reason when refused", ok, why, c.wantAllowed)
			}
		})
	}
	if !broken.Broken() || (&Policy{}).Broken() || (*Policy)(nil).Broken() {
		t.Error("Broken must be true only for an unreadable policy")
	}
}

// TestPolicyRefusesEmptyRestrictions: an administrator who writes
// `allowed_agents = []` or `max_grant = "0s"` means "none", but an empty list
// or zero reads as "not restricted". Read as written, the policy would allow
// every agent (or resource, or a 7-day grant) while looking like a lock-down;
// it is refused instead, which fails closed and says what to write.
func TestPolicyRefusesEmptyRestrictions(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ text, key string }{
		{"allowed_agents = []\n", "allowed_agents"},
		{"allowed_resources = []\n", "allowed_resources"},
		{"max_grant = \"0s\"\n", "max_grant"},
		{"[[x]]\n", "x"}, // sanity: an unknown key is still refused first
	} {
		p := filepath.Join(dir, "policy.toml")
		if err := os.WriteFile(p, []byte(tc.text), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadPolicy(p); err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%q: got %v, want an error naming the file and %s", tc.text, err, tc.key)
		}
	}
}
