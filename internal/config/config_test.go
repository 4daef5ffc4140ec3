package config

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const base = `authority = "https://login.example/7f3c2a10-5b8e-4c1d-9a6f-2e4b8d0c1a93"
client_id = "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a"
blueprint_app_id = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
state_dir = "state"
`

const agent = `
[[agent]]
name = "mail"
app_id = "c7d8e9f0-a1b2-4c3d-9e4f-5a6b7c8d9e0f"
[[agent.binding]]
exe = "/opt/mail/bin/mail"
sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
`

func TestParseDefaults(t *testing.T) {
	c, err := Parse("/home/u/.config/agentidd/config.toml", []byte(base+agent))
	if err != nil {
		t.Fatal(err)
	}
	if c.UserScope != "api://a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d/access_as_user" || c.SecretStore != "os" ||
		c.MinTTL.Duration != time.Minute || c.RefreshWindow.Duration != 15*time.Minute || c.DenyCooldown.Duration != 10*time.Minute || c.MaxTokensPerAgent != 1000 {
		t.Errorf("defaults: %+v", c)
	}
	if c.StateDir != filepath.FromSlash("/home/u/.config/agentidd/state") {
		t.Errorf("relative state_dir resolved to %q", c.StateDir)
	}
	if a, ok := c.Agent("mail"); !ok || a.DisplayName != "mail" || len(a.Bindings) != 1 {
		t.Errorf("agent: %+v %v", a, ok)
	}
}

func TestParseRefusals(t *testing.T) {
	cases := []struct{ name, text, want string }{
		{"unknown key", base + "min_tl = \"1m\"\n", "unknown key(s): min_tl"},
		{"unknown agent key", base + agent + "colour = \"red\"\n", "unknown key(s): agent.binding.colour"},
		{"http authority", strings.Replace(base, "https://", "http://", 1), "authority"},
		{"bad client id", strings.Replace(base, "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a", "nope", 1), "client_id"},
		{"bad secret store", base + "secret_store = \"clear\"\n", "secret_store"},
		{"negative duration", base + "min_ttl = \"-1s\"\n", "negative"},
		{"negative token cap", base + "max_tokens_per_agent = -1\n", "max_tokens_per_agent"},
		{"relative exe", base + strings.Replace(agent, "/opt/mail/bin/mail", "mail", 1), "absolute path"},
		{"short hash", base + strings.Replace(agent, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "abc", 1), "64 lower-case hex"},
		{"duplicate agent", base + agent + agent, "defined twice"},
		{"bad agent name", base + strings.Replace(agent, `name = "mail"`, `name = "Mail Agent"`, 1), "lower-case"},
		{"authority with a version path", strings.Replace(base, `login.example/7f3c2a10-5b8e-4c1d-9a6f-2e4b8d0c1a93`, `login.example/common/v2.0`, 1), "nothing after the tenant"},
		{"authority with an empty query", strings.Replace(base, `93"`, `93?"`, 1), "nothing after the tenant"},
		{"authority with an empty fragment", strings.Replace(base, `93"`, `93#"`, 1), "nothing after the tenant"},
		{"authority tenant dot-dot", strings.Replace(base, `login.example/7f3c2a10-5b8e-4c1d-9a6f-2e4b8d0c1a93`, `login.example/..`, 1), "nothing after the tenant"},
		{"authority tenant with a space", strings.Replace(base, `login.example/7f3c2a10-5b8e-4c1d-9a6f-2e4b8d0c1a93`, `login.example/a b`, 1), "nothing after the tenant"},
		{"relative socket", base + "socket = \"run/agentidd.sock\"\n", "socket"},
		{"min_ttl longer than tokens live", base + "min_ttl = \"5h\"\n", "min_ttl"},
		{"rate limit not a number", base + "rate_limit = nan\n", "finite"},
		{"rate limit infinite", base + "rate_limit = inf\n", "finite"},
		{"rate limit zero", base + "rate_limit = 0.0\n", "rate_limit: zero is not a setting"},
		{"burst zero", base + "burst = 0\n", "burst: zero is not a setting"},
		{"deny cool-down zero", base + "deny_cooldown = \"0s\"\n", "deny_cooldown: zero is not a setting"},
		{"audit keep zero", base + "audit_keep = 0\n", "audit_keep: zero is not a setting"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("/etc/agentidd.toml", []byte(tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "/etc/agentidd.toml") {
				t.Errorf("got %v, want an error naming the file and %q", err, tc.want)
			}
		})
	}
}
