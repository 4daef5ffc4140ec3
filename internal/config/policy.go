package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Policy is the managed policy an administrator puts in a machine-wide, root-owned file. It narrows what the user's
// config allows; it never widens it. A missing file is an empty policy (nothing narrowed).
type Policy struct {
	// AllowedAgents lists the agent identity app ids that may be used at all; empty allows every configured agent.
	AllowedAgents []string `toml:"allowed_agents"`
	// AllowedResources lists resource URIs (e.g. api://files.contoso.example) tokens may be minted for; empty allows all.
	AllowedResources []string `toml:"allowed_resources"`
	// DenyAppMode forbids app-only tokens (agents acting on their own authority).
	DenyAppMode bool `toml:"deny_app_mode"`
	// MaxGrant caps how long a user's consent lasts (at most 7 days whatever this says).
	MaxGrant Duration `toml:"max_grant"`

	Path   string `toml:"-"`
	broken string
}

// DefaultPolicyPath is $AGENTIDD_POLICY, else the machine-wide location for this OS.
func DefaultPolicyPath() string {
	if p := os.Getenv("AGENTIDD_POLICY"); p != "" {
		return p
	}
	switch runtime.GOOS {
	case "windows":
		return filepath.Join(os.Getenv("ProgramData"), "agentidd", "policy.toml")
	case "darwin":
		return "/Library/Application Support/agentidd/policy.toml"
	default:
		return "/etc/agentidd/policy.toml"
	}
}

// LoadPolicy reads the policy file; a file that does not exist is the empty policy.
func LoadPolicy(path string) (*Policy, error) {
	data, err := readFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &Policy{Path: path}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading managed policy: %w", err)
	}
	return parsePolicy(path, data)
}

// parsePolicy decodes and validates policy text; path is only used in messages.
func parsePolicy(path string, data []byte) (*Policy, error) {
	var p Policy
	md, err := decodeStrict(path, data, &p)
	if err != nil {
		return nil, err
	}
	// Empty or zero means "not restricted", the opposite of what an
	// administrator who writes it most likely wants: refused, so the policy
	// fails closed instead of silently allowing everything.
	for _, e := range []struct {
		key   string
		empty bool
		means string
	}{
		{"allowed_agents", len(p.AllowedAgents) == 0, "every configured agent"},
		{"allowed_resources", len(p.AllowedResources) == 0, "every resource"},
		{"max_grant", p.MaxGrant.Duration == 0, "the built-in 7-day cap"},
	} {
		if e.empty && md.IsDefined(e.key) {
			return nil, fmt.Errorf("%s: %s: empty is not a restriction (an absent key allows %s); list what is allowed, or remove the key", path, e.key, e.means)
		}
	}
	for _, id := range p.AllowedAgents {
		if !guidRE.MatchString(id) {
			return nil, fmt.Errorf("%s: allowed_agents: %q is not an app id (GUID)", path, id)
		}
	}
	for _, r := range p.AllowedResources {
		if !strings.Contains(r, "://") || strings.HasSuffix(r, "/") {
			return nil, fmt.Errorf("%s: allowed_resources: %q must be a resource URI like api://files.contoso.example", path, r)
		}
	}
	p.Path = path
	return &p, nil
}

// AllowsAgent is the agent part of Allows: an unreadable policy or an agent missing from allowed_agents.
func (p *Policy) AllowsAgent(agentAppID string) (bool, string) {
	if p.Broken() {
		return false, "the managed policy cannot be read, so nothing is allowed until it is fixed: " + p.broken
	}
	if excluded, why := p.ExcludesAgent(agentAppID); excluded {
		return false, why
	}
	return true, ""
}

// ExcludesAgent says whether a readable policy leaves the agent out of allowed_agents: the administrator's decision,
// which ends the agent's grants. An unreadable policy excludes nobody. It refuses every request while it is broken,
// but what it says is unknown, and revoking on it would make every user consent again once the file is fixed (a typo,
// or a read in the middle of an in-place write).
func (p *Policy) ExcludesAgent(agentAppID string) (bool, string) {
	if p == nil || p.Broken() {
		return false, ""
	}
	if len(p.AllowedAgents) > 0 && !slices.ContainsFunc(p.AllowedAgents, func(id string) bool { return strings.EqualFold(id, agentAppID) }) {
		return true, "the managed policy does not allow this agent identity"
	}
	return false, ""
}

// Broken says whether this stands in for a policy file that exists but cannot be read (BrokenPolicy).
func (p *Policy) Broken() bool { return p != nil && p.broken != "" }

// Allows says whether the policy permits a token for agent app id, mode ("obo"|"app") and resource; the reason says
// which rule refused.
func (p *Policy) Allows(agentAppID, mode, resource string) (bool, string) {
	if p == nil {
		return true, "" // no policy file: nothing narrowed
	}
	if ok, why := p.AllowsAgent(agentAppID); !ok {
		return false, why
	}
	if mode == "app" && p.DenyAppMode {
		return false, "the managed policy forbids app-only tokens"
	}
	if len(p.AllowedResources) > 0 && !slices.Contains(p.AllowedResources, resource) {
		return false, "the managed policy does not allow tokens for " + resource
	}
	return true, ""
}

// GrantCap is the longest consent the policy allows (0 = no cap beyond the built-in 7 days).
func (p *Policy) GrantCap() time.Duration {
	if p == nil {
		return 0
	}
	return p.MaxGrant.Duration
}

// BrokenPolicy stands in for a policy file that exists but cannot be read: it refuses everything (fail closed) and
// says why, rather than silently falling back to no policy.
func BrokenPolicy(path string, err error) *Policy {
	return &Policy{Path: path, broken: err.Error()}
}
