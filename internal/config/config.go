// Package config reads agentidd's one TOML file. Every key has a default and unknown keys are errors, so a typo never
// silently weakens a setting.
package config

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Config is the daemon's configuration.
type Config struct {
	// Authority is https://<host>/<tenant id>.
	Authority string `toml:"authority"`
	// ClientID is the public client app the user signs in to.
	ClientID string `toml:"client_id"`
	// BlueprintAppID is the Agent ID blueprint the agents belong to.
	BlueprintAppID string `toml:"blueprint_app_id"`
	// UserScope is the blueprint's delegated scope the user's token is requested for; default api://<blueprint>/access_as_user.
	UserScope string `toml:"user_scope"`
	// DevCAFile makes the daemon trust this CA and skip instance discovery: for the local emulator only.
	DevCAFile string `toml:"dev_ca_file"`
	// SecretStore is "os" (Keychain, Secret Service, Credential Manager + DPAPI) or "file" (explicit opt-in, see docs/secrets.md).
	SecretStore string `toml:"secret_store"`
	// StateDir holds the encrypted store and the audit log.
	StateDir string `toml:"state_dir"`
	// Socket overrides the endpoint path.
	Socket string `toml:"socket"`
	// MinTTL is the default minimum remaining lifetime of a served token.
	MinTTL Duration `toml:"min_ttl"`
	// RefreshWindow: only tokens used within it are refreshed ahead of expiry.
	RefreshWindow Duration `toml:"refresh_window"`
	// MaxTokensPerAgent caps the tokens one agent may have cached (and persisted); its least recently used one is
	// evicted to make room.
	MaxTokensPerAgent int `toml:"max_tokens_per_agent"`
	// AuditMaxMB rotates the audit log before it passes this many MiB; AuditKeep rotated files are kept.
	AuditMaxMB int `toml:"audit_max_mb"`
	AuditKeep  int `toml:"audit_keep"`
	// ConsentWaitMax caps how long GetToken may wait for a consent decision.
	ConsentWaitMax Duration `toml:"consent_wait_max"`
	// DenyCooldown: how long a denied consent is remembered.
	DenyCooldown Duration `toml:"deny_cooldown"`
	// RateLimit is the per-agent sustained GetToken rate (per second) and Burst its bucket size.
	RateLimit float64 `toml:"rate_limit"`
	Burst     int     `toml:"burst"`
	Agents    []Agent `toml:"agent"`

	// Path is where the file was read from (not a key).
	Path string `toml:"-"`
}

// Agent maps a local agent name to its Entra agent identity and to the executables allowed to act as it.
type Agent struct {
	Name        string    `toml:"name"`
	AppID       string    `toml:"app_id"`
	DisplayName string    `toml:"display_name"`
	Bindings    []Binding `toml:"binding"`
}

// Binding ties an agent to an executable by path and content hash.
type Binding struct {
	Exe    string `toml:"exe"`
	SHA256 string `toml:"sha256"`
}

// Duration is a time.Duration written as "90s", "15m".
type Duration struct{ time.Duration }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("duration %s is negative", v)
	}
	d.Duration = v
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

var (
	guidRE   = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	nameRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// DefaultPath is the user's config file.
func DefaultPath() (string, error) {
	if p := os.Getenv("AGENTIDD_CONFIG"); p != "" {
		return p, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("finding the config directory: %w", err)
	}
	return filepath.Join(dir, "agentidd", "config.toml"), nil
}

// Load reads and validates a config file.
func Load(path string) (*Config, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return Parse(path, data)
}

// decodeStrict decodes TOML into v and refuses keys v has no field for: a misspelt key must not silently fall back to
// a default (for the policy, a weaker one).
func decodeStrict(path string, data []byte, v any) (toml.MetaData, error) {
	if len(data) > maxFileSize {
		return toml.MetaData{}, errTooBig(path)
	}
	if err := checkShape(data); err != nil {
		return toml.MetaData{}, fmt.Errorf("%s: %w", path, err)
	}
	md, err := toml.Decode(string(data), v)
	if err != nil {
		return md, fmt.Errorf("%s: %w", path, shortError{err})
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		keys := make([]string, len(undecoded))
		for i, k := range undecoded {
			keys[i] = k.String()
		}
		sort.Strings(keys)
		return md, fmt.Errorf("%s: unknown key(s): %s", path, listKeys(keys))
	}
	return md, nil
}

// shortError cuts a decoder error's text: it quotes the last key and, for a
// duration, the value, whole, and a file may hold a key or value of any size.
type shortError struct{ err error }

func (e shortError) Error() string {
	const longest = 512
	msg := e.err.Error()
	if len(msg) <= longest {
		return msg
	}
	return strings.ToValidUTF8(msg[:longest], "") + "…"
}

func (e shortError) Unwrap() error { return e.err }

// listKeys names the first few keys, each cut short: the message is logged on
// every reload attempt, and a file may hold thousands of keys or a huge one.
func listKeys(keys []string) string {
	const most, longest = 10, 64
	var b strings.Builder
	for i, k := range keys {
		if i == most {
			fmt.Fprintf(&b, " and %d more", len(keys)-most)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		if len(k) > longest {
			k = strings.ToValidUTF8(k[:longest], "") + "…"
		}
		b.WriteString(k)
	}
	return b.String()
}

// Parse decodes and validates config text; path is only used in messages and to resolve relative paths.
func Parse(path string, data []byte) (*Config, error) {
	var c Config
	md, err := decodeStrict(path, data, &c)
	if err != nil {
		return nil, err
	}
	if err := c.refuseExplicitZeros(md); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	c.Path = path
	if err := c.applyDefaults(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

// refuseExplicitZeros refuses a key written as zero where an absent key means a default: `rate_limit = 0` or
// `deny_cooldown = "0s"` read as "none" to a user, and silently becoming 200/s or 10 minutes would surprise them.
func (c *Config) refuseExplicitZeros(md toml.MetaData) error {
	zero := []struct {
		key, def string
		isZero   bool
	}{
		{"min_ttl", "60s", c.MinTTL.Duration == 0},
		{"refresh_window", "15m", c.RefreshWindow.Duration == 0},
		{"max_tokens_per_agent", "1000", c.MaxTokensPerAgent == 0},
		{"audit_max_mb", "64", c.AuditMaxMB == 0},
		{"audit_keep", "8", c.AuditKeep == 0},
		{"consent_wait_max", "2m", c.ConsentWaitMax.Duration == 0},
		{"deny_cooldown", "10m", c.DenyCooldown.Duration == 0},
		{"rate_limit", "200", c.RateLimit == 0},
		{"burst", "400", c.Burst == 0},
	}
	var errs []error
	for _, z := range zero {
		if z.isZero && md.IsDefined(z.key) {
			errs = append(errs, fmt.Errorf("%s: zero is not a setting (it cannot be turned off); remove the key for the default (%s) or give a positive value", z.key, z.def))
		}
	}
	return errors.Join(errs...)
}

func (c *Config) applyDefaults() error {
	if c.UserScope == "" && c.BlueprintAppID != "" {
		c.UserScope = "api://" + c.BlueprintAppID + "/access_as_user"
	}
	if c.SecretStore == "" {
		c.SecretStore = "os"
	}
	if c.StateDir == "" {
		dir, err := defaultStateDir()
		if err != nil {
			return err
		}
		c.StateDir = dir
	}
	c.StateDir = c.resolve(c.StateDir)
	if c.DevCAFile != "" {
		c.DevCAFile = c.resolve(c.DevCAFile)
	}
	if c.MinTTL.Duration == 0 {
		c.MinTTL.Duration = 60 * time.Second
	}
	if c.RefreshWindow.Duration == 0 {
		c.RefreshWindow.Duration = 15 * time.Minute
	}
	if c.MaxTokensPerAgent == 0 {
		c.MaxTokensPerAgent = 1000
	}
	if c.AuditMaxMB == 0 {
		c.AuditMaxMB = 64
	}
	if c.AuditKeep == 0 {
		c.AuditKeep = 8
	}
	if c.ConsentWaitMax.Duration == 0 {
		c.ConsentWaitMax.Duration = 2 * time.Minute
	}
	if c.DenyCooldown.Duration == 0 {
		c.DenyCooldown.Duration = 10 * time.Minute
	}
	if c.RateLimit == 0 {
		c.RateLimit = 200
	}
	if c.Burst == 0 {
		c.Burst = 400
	}
	// Binding paths are not resolved: an executable the user approves is named absolutely, never relative to wherever
	// the config file happens to live.
	for i := range c.Agents {
		if c.Agents[i].DisplayName == "" {
			c.Agents[i].DisplayName = c.Agents[i].Name
		}
	}
	return nil
}

func (c *Config) resolve(p string) string {
	if p == "" || filepath.IsAbs(p) || c.Path == "" {
		return p
	}
	return filepath.Join(filepath.Dir(c.Path), p)
}

func (c *Config) validate() error {
	var errs []error
	if !validAuthority(c.Authority) {
		// One path segment, the tenant: MSAL appends the endpoints itself, so ".../<tenant>/v2.0" answers 404.
		errs = append(errs, fmt.Errorf("authority: must be an https URL like https://login.microsoftonline.com/<tenant id>, with nothing after the tenant"))
	}
	if c.Socket != "" && !filepath.IsAbs(c.Socket) {
		// The daemon and the CLI run in different directories: a relative path would name two places.
		errs = append(errs, fmt.Errorf("socket: must be an absolute path"))
	}
	if c.MinTTL.Duration > maxMinTTL {
		errs = append(errs, fmt.Errorf("min_ttl: at most %v (Entra's tokens live about an hour: a longer minimum would refuse every token)", maxMinTTL))
	}
	if !guidRE.MatchString(c.ClientID) {
		errs = append(errs, fmt.Errorf("client_id: must be an application (client) id GUID"))
	}
	if !guidRE.MatchString(c.BlueprintAppID) {
		errs = append(errs, fmt.Errorf("blueprint_app_id: must be a GUID"))
	}
	if c.SecretStore != "os" && c.SecretStore != "file" {
		errs = append(errs, fmt.Errorf(`secret_store: must be "os" or "file", not %q`, c.SecretStore))
	}
	if c.RateLimit < 0 || math.IsNaN(c.RateLimit) || math.IsInf(c.RateLimit, 0) || c.Burst < 0 {
		// NaN and infinity would turn the per-agent rate limit off.
		errs = append(errs, errors.New("rate_limit and burst must be finite and not negative"))
	}
	if c.AuditMaxMB < 0 || c.AuditKeep < 0 {
		errs = append(errs, errors.New("audit_max_mb and audit_keep must be positive (defaults 64 and 8)"))
	}
	if c.MaxTokensPerAgent < 0 {
		errs = append(errs, errors.New("max_tokens_per_agent must be positive (default 1000)"))
	}
	seen := map[string]bool{}
	for i, a := range c.Agents {
		where := fmt.Sprintf("agent[%d]", i)
		if !nameRE.MatchString(a.Name) {
			errs = append(errs, fmt.Errorf("%s.name: %q must be lower-case letters, digits, '.', '_' or '-'", where, a.Name))
		}
		if seen[a.Name] {
			errs = append(errs, fmt.Errorf("%s.name: %q is defined twice", where, a.Name))
		}
		seen[a.Name] = true
		if !guidRE.MatchString(a.AppID) {
			errs = append(errs, fmt.Errorf("%s.app_id: must be the agent identity's app id (GUID)", where))
		}
		for j, b := range a.Bindings {
			if !filepath.IsAbs(b.Exe) {
				errs = append(errs, fmt.Errorf("%s.binding[%d].exe: must be an absolute path", where, j))
			}
			if !sha256RE.MatchString(b.SHA256) {
				errs = append(errs, fmt.Errorf("%s.binding[%d].sha256: must be 64 lower-case hex digits", where, j))
			}
		}
	}
	return errors.Join(errs...)
}

// Agent returns the named agent.
func (c *Config) Agent(name string) (Agent, bool) {
	for _, a := range c.Agents {
		if a.Name == name {
			return a, true
		}
	}
	return Agent{}, false
}

func defaultStateDir() (string, error) {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "agentidd"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("finding the home directory: %w", err)
	}
	return filepath.Join(home, ".local", "state", "agentidd"), nil
}

// maxMinTTL bounds the configured default min_ttl, which every token must still have left when it is served.
const maxMinTTL = 30 * time.Minute

// validAuthority reports whether a is https://host[:port]/<tenant>, nothing more.
func validAuthority(a string) bool {
	u, err := url.Parse(a)
	// An empty "?" or "#" parses to no query and no fragment, yet MSAL would be handed it.
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.ForceQuery ||
		u.Fragment != "" || strings.Contains(a, "#") {
		return false
	}
	tenant := strings.TrimSuffix(strings.TrimPrefix(u.Path, "/"), "/")
	// A tenant is a GUID, a domain name or common/organizations/consumers: "..", a space or an escape is a typo that
	// would otherwise surface only as an odd sign-in failure.
	return tenantRE.MatchString(tenant) && u.RawPath == ""
}

var tenantRE = regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$`)
