package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/agentidd/agentidd/internal/audit"
	"github.com/agentidd/agentidd/internal/cache"
	"github.com/agentidd/agentidd/internal/config"
)

func osPID() int { return os.Getpid() }

func (d *Daemon) config() *config.Config {
	d.cfgMu.Lock()
	defer d.cfgMu.Unlock()
	return d.cfg
}

func (d *Daemon) auditPath() string { return filepath.Join(d.config().StateDir, "audit.jsonl") }

// watchConfig reloads the config when its file changes. A config that fails to parse is logged and the last good one
// stays in force.
func (d *Daemon) watchConfig(ctx context.Context) {
	d.watchFile(ctx, d.cfgPath, "config", d.reload)
}

// watchFile calls changed (debounced: editors write in several steps) each time the file at path is written, created,
// renamed or removed, until ctx ends. Editors and deployment tools replace files by rename, so the directory is
// watched, not the file. Without the directory there is nothing to watch; a restart picks up a new file.
func (d *Daemon) watchFile(ctx context.Context, path, what string, changed func()) {
	w, err := fsnotify.NewWatcher()
	if err == nil {
		err = w.Add(filepath.Dir(path))
		defer w.Close()
	}
	if err != nil {
		d.log.Info(what+" is not watched for changes", "path", path, "err", err)
		return
	}
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if filepath.Clean(ev.Name) == filepath.Clean(path) {
				debounce = time.After(200 * time.Millisecond)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			d.log.Warn(what+" watcher", "err", err)
		case <-debounce:
			changed()
		}
	}
}

func (d *Daemon) reload() {
	cfg, err := config.Load(d.cfgPath)
	if err != nil {
		d.log.Error("config reload failed; keeping the last good config", "err", err)
		return
	}
	old := d.config()
	if cfg.Authority != old.Authority || cfg.ClientID != old.ClientID || cfg.BlueprintAppID != old.BlueprintAppID ||
		cfg.StateDir != old.StateDir || cfg.Socket != old.Socket || cfg.SecretStore != old.SecretStore || cfg.DevCAFile != old.DevCAFile ||
		cfg.AuditMaxMB != old.AuditMaxMB || cfg.AuditKeep != old.AuditKeep {
		d.log.Error("config reload: authority, client_id, blueprint_app_id, state_dir, socket, secret_store, dev_ca_file, audit_max_mb and audit_keep need a restart; keeping the last good config")
		return
	}
	// Agents that are gone, or now name another agent identity, lose their grants and tokens before the new config is
	// in force. Only theirs: another local agent sharing the identity keeps its own.
	for _, a := range old.Agents {
		if now, still := cfg.Agent(a.Name); !still || now.AppID != a.AppID {
			d.dropLocalAgent(a, "agent removed from config")
		}
	}
	d.cfgMu.Lock()
	d.cfg = cfg
	d.cfgMu.Unlock()
	d.broker.SetConfig(cfg)
	d.cache.SetLimits(cfg.RefreshWindow.Duration, cfg.MaxTokensPerAgent)
	d.consent.SetDenyCooldown(cfg.DenyCooldown.Duration)
	d.log.Info("config reloaded", "agents", len(cfg.Agents))
}

// dropLocalAgent revokes one configured agent's grants and purges its tokens (cache and store) before returning.
func (d *Daemon) dropLocalAgent(a config.Agent, reason string) {
	d.consent.RevokeLocalAgent(a.Name, a.AppID, reason)
	mine := func(k cache.Key) bool { return k.AgentName == a.Name && k.AgentAppID == a.AppID }
	d.cache.PurgeMatching(mine, reason)
	if d.store != nil {
		d.tokens.purge(func(s servedToken) bool { return mine(s.Key) })
	}
}

// dropAgent revokes the grants and purges the tokens (cache and store) of every local agent of an agent identity
// before returning.
func (d *Daemon) dropAgent(appID, reason string) {
	d.consent.RevokeAgent(appID, reason)
	d.cache.PurgeAgent(appID, reason)
	if d.store != nil {
		d.tokens.purge(func(s servedToken) bool { return s.Key.AgentAppID == appID })
	}
}

// loadPolicy reads the managed policy; an unreadable one fails closed.
func (d *Daemon) loadPolicy() *config.Policy {
	path := config.DefaultPolicyPath()
	p, err := config.LoadPolicy(path)
	if err != nil {
		d.log.Error("managed policy unreadable; refusing every token until it is fixed", "path", path, "err", err)
		return config.BrokenPolicy(path, err)
	}
	return p
}

// applyPolicy puts a policy in force: agents it leaves out of allowed_agents lose their grants and tokens first; then
// tokens for resources or modes it no longer allows leave the cache, the store and their watchers (their grants stay,
// unusable while the policy says no: loosening it again needs no new consent), and a shorter grant cap shortens the
// grants. An unreadable policy refuses every token, so every token goes, but it revokes no grant: it says nothing
// about which agents the administrator wants, and once it is fixed the agents it allows must work without new consent.
func (d *Daemon) applyPolicy(p *config.Policy) {
	for _, a := range d.config().Agents {
		if excluded, why := p.ExcludesAgent(a.AppID); excluded {
			d.dropAgent(a.AppID, why)
		}
	}
	// In force before the purge, so that no request fetches again what the purge removes (a fetch already under way is
	// discarded by the purge; a refresh asks the broker, which checks the policy too).
	d.broker.SetPolicy(p)
	refused := func(k cache.Key) bool {
		ok, _ := p.Allows(k.AgentAppID, k.Mode, k.Resource)
		return !ok
	}
	const reason = "the managed policy no longer allows this token"
	if n := d.cache.PurgeMatching(refused, reason); n > 0 {
		_, _ = d.audit.Append(audit.Record{Event: audit.EventPurge, Outcome: audit.OutcomeOK, Reason: fmt.Sprintf("%s (%d tokens)", reason, n)})
	}
	if d.store != nil {
		d.tokens.purge(func(s servedToken) bool { return refused(s.Key) })
	}
	if err := d.consent.SetMaxGrant(p.GrantCap()); err != nil {
		d.log.Warn("grants shortened to the managed policy's cap, but not saved", "err", err)
	}
}

// watchPolicy reloads the managed policy when its file changes.
func (d *Daemon) watchPolicy(ctx context.Context) {
	path := config.DefaultPolicyPath()
	d.watchFile(ctx, path, "managed policy", func() {
		d.applyPolicy(d.loadPolicy())
		d.log.Info("managed policy reloaded", "path", path)
	})
}
