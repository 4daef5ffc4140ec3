package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

// watchPollInterval is how often a watched file is checked without an event: the backstop for whatever the file-system
// events miss (an overflowed event queue, a network file system, a directory renamed further up, a watch that could
// not be placed). Cheap: a few stats and no read unless something changed.
const watchPollInterval = 30 * time.Second

// watchDebounce lets a change settle before the file is read: editors and deployment tools write in several steps.
const watchDebounce = 200 * time.Millisecond

// watchFile calls changed each time the file at path changes, until ctx ends; calls are debounced, and one change
// (however many events it raises) is one call. The file may be missing, may be a symlink, and may sit under symlinks or
// under directories that do not exist yet:
//
//   - Editors and deployment tools replace files by rename, so directories are watched, not files: the directory of
//     each entry the path passes through (every symlink on the way, then the file itself), each resolved to its real
//     location. An edit of a symlinked file's target is then seen in the target's directory, and a symlink re-pointed
//     in the link's directory.
//   - Where a directory on the way does not exist (a managed policy that an administrator creates later), its nearest
//     existing ancestor is watched for it, and the watches move down as directories appear and back up as they go.
//   - The watches are recomputed after every event that concerns them and on every poll, and each is compared with the
//     directory now at its path, so a directory deleted (or renamed away) and made again, or a symlink re-pointed, is
//     watched afresh.
//   - Every watchPollInterval the file is stat'ed (following symlinks: where they lead, size, mtime, mode, identity)
//     and a difference from what was last loaded counts as a change, so what the events miss is still picked up.
//
// An event that names the file itself always reloads it (a same-size edit within the file system's clock granularity
// would fool the stat); other events reload only when the stat differs, so that a directory appearing on the way
// does not reload an unchanged file.
func (d *Daemon) watchFile(ctx context.Context, path, what string, changed func()) {
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	fw := &fileWatch{path: path, what: what, log: d.log, watched: map[string]os.FileInfo{}, failing: map[string]bool{}}
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w, err := fsnotify.NewWatcher(); err != nil {
		d.log.Warn(what+" is only polled for changes", "path", path, "every", watchPollInterval, "err", err)
	} else {
		defer w.Close()
		fw.w, events, errs = w, w.Events, w.Errors
	}
	fw.arm()
	last := statWatched(path, fw.plan)
	poll := time.NewTicker(watchPollInterval)
	defer poll.Stop()
	var debounce <-chan time.Time
	fileEvent := false
	check := func(force bool) {
		fw.arm()
		// Stat before the reload reads: a write that lands in between is then seen as a difference next time, never
		// hidden.
		now := statWatched(path, fw.plan)
		if !force && now.same(last) {
			return
		}
		last = now
		if ctx.Err() == nil {
			changed()
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				events = nil // the watcher is gone; the poll goes on
				continue
			}
			switch fw.concerns(ev) {
			case eventNone:
				continue
			case eventFile:
				fileEvent = true
			}
			debounce = time.After(watchDebounce)
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			d.log.Warn(what+" watcher", "err", err)
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				// Events were dropped, maybe the file's own: reload it.
				fileEvent = true
				debounce = time.After(watchDebounce)
			}
		case <-debounce:
			debounce = nil
			check(fileEvent)
			fileEvent = false
		case <-poll.C:
			if debounce == nil { // else the pending check comes shortly
				check(false)
			}
		}
	}
}

// fileWatch keeps the directory watches for one file in line with the file system.
type fileWatch struct {
	path, what string
	log        *slog.Logger
	w          *fsnotify.Watcher // nil: polled only
	plan       watchPlan
	watched    map[string]os.FileInfo // the directories watched, as they were when the watch was placed
	failing    map[string]bool        // directories whose watch could not be placed, logged once
}

// watchPlan is what to watch for a path: entries are the directory entries the path passes through that decide what it
// names (each symlink on the way, then the file, or the first component that does not exist), each under its real,
// symlink-free directory; file is the last of them when it is the path's final component (existing or not).
type watchPlan struct {
	entries []string
	file    string
	dirs    map[string]bool // the parent of each entry: the directories to watch
}

// planWatch is the watch plan for path (absolute, clean).
func planWatch(path string) watchPlan {
	p := walkPath(path)
	p.dirs = make(map[string]bool, len(p.entries))
	for _, e := range p.entries {
		p.dirs[filepath.Dir(e)] = true
	}
	return p
}

// walkPath follows path component by component as the kernel does (symlinks included), recording each symlink passed
// and the entry the walk ends at. It never fails: what it cannot read ends the walk there, and that entry is watched.
func walkPath(path string) watchPlan {
	const sep = string(filepath.Separator)
	var p watchPlan
	vol := filepath.VolumeName(path)
	resolved := vol + sep
	rest := strings.TrimLeft(path[len(vol):], sep)
	for hops := 0; rest != ""; {
		var name string
		name, rest, _ = strings.Cut(rest, sep)
		switch name {
		case "", ".":
			continue
		case "..":
			resolved = filepath.Dir(resolved) // resolved holds no symlink, so this is the real parent
			continue
		}
		entry := filepath.Join(resolved, name)
		fi, err := os.Lstat(entry)
		if err == nil && fi.Mode()&fs.ModeSymlink == 0 && (rest == "" || fi.IsDir()) {
			if rest == "" {
				p.file = entry
				p.entries = append(p.entries, entry)
			} // else a plain directory on the way: watched only as the parent of the next entry
			resolved = entry
			continue
		}
		if !slices.Contains(p.entries, entry) { // a symlink loop passes the same link again
			p.entries = append(p.entries, entry)
		}
		if err != nil {
			if rest == "" {
				p.file = entry
			}
			return p
		}
		// A symlink (or a Windows junction, which Lstat reports as irregular). Whatever else stands where a directory
		// should ends the walk, as does a loop: the entry is watched for the day it changes.
		hops++
		target, err := os.Readlink(entry)
		if err != nil || target == "" || hops > 40 {
			return p
		}
		if v := filepath.VolumeName(target); v != "" || os.IsPathSeparator(target[0]) {
			if v == "" {
				v = vol
			}
			resolved, target = v+sep, target[len(v):]
		}
		if rest != "" {
			target += sep + rest
		}
		rest = strings.TrimLeft(target, sep)
	}
	return p
}

func (p watchPlan) same(q watchPlan) bool {
	return p.file == q.file && slices.Equal(p.entries, q.entries)
}

// arm recomputes the plan and moves the watches to it. A directory can appear, go or be replaced between planning and
// watching (then no event tells of it), so it plans again once the watches are in place, until nothing moves.
func (fw *fileWatch) arm() {
	for range 8 {
		p := planWatch(fw.path)
		moved := fw.place(p.dirs)
		fw.plan = p
		if !moved && planWatch(fw.path).same(p) {
			return
		}
	}
}

// place watches exactly the directories in want and reports whether it had to change a watch. A watch follows the
// directory it was placed on, not its name: when the name now names another directory (the old one was renamed away
// or deleted, and a new one made), the watch is placed again.
func (fw *fileWatch) place(want map[string]bool) (moved bool) {
	if fw.w == nil {
		return false
	}
	alive := map[string]bool{}
	for _, dir := range fw.w.WatchList() {
		alive[dir] = true
	}
	for dir := range fw.watched {
		if !want[dir] {
			_ = fw.w.Remove(dir)
			delete(fw.watched, dir)
			moved = true
		}
	}
	for dir := range want {
		fi, err := os.Stat(dir) // before Add: if the directory is replaced in between, the next arm sees it
		if err == nil {
			os.SameFile(fi, fi) // see statWatched
		}
		old, ok := fw.watched[dir]
		if ok && alive[dir] && err == nil && os.SameFile(old, fi) {
			continue
		}
		moved = true
		if ok {
			_ = fw.w.Remove(dir)
			delete(fw.watched, dir)
		}
		if err == nil {
			err = fw.w.Add(dir)
		}
		if err != nil {
			if !fw.failing[dir] {
				fw.log.Warn(fw.what+": a directory cannot be watched; changes under it are polled", "dir", dir, "every", watchPollInterval, "err", err)
			}
			fw.failing[dir] = true
			continue
		}
		fw.watched[dir] = fi
		delete(fw.failing, dir)
	}
	return moved
}

type eventKind int

const (
	eventNone eventKind = iota // nothing the file depends on
	eventPath                  // a symlink or directory on the way: re-plan, reload if the file now differs
	eventFile                  // the file itself: reload
)

// concerns says what an event means for the watched file. Events for other files in the watched directories are
// ignored, so a busy directory (an ancestor watched for a missing one) causes no reloads.
func (fw *fileWatch) concerns(ev fsnotify.Event) eventKind {
	name := filepath.Clean(ev.Name)
	if name == fw.plan.file {
		return eventFile
	}
	if slices.Contains(fw.plan.entries, name) {
		return eventPath
	}
	if fw.plan.dirs[name] {
		return eventPath // a watched directory itself was removed, renamed or changed
	}
	return eventNone
}

// fileState is what a check compares: the file's stat (following symlinks) and, while it exists, where the symlinks
// lead. The chain itself is left out: a directory appearing on the way to a file that is still missing changes nothing
// worth a reload.
type fileState struct {
	target, err string
	info        os.FileInfo
}

func statWatched(path string, p watchPlan) fileState {
	fi, err := os.Stat(path)
	if err != nil {
		return fileState{err: err.Error()}
	}
	// Windows reads a file's identity lazily, from the path, when it is first compared: read it now, while the path
	// still names this file.
	os.SameFile(fi, fi)
	return fileState{target: p.file, info: fi}
}

func (s fileState) same(o fileState) bool {
	if s.target != o.target || s.err != o.err || (s.info == nil) != (o.info == nil) {
		return false
	}
	return s.info == nil || os.SameFile(s.info, o.info) && s.info.Size() == o.info.Size() &&
		s.info.ModTime().Equal(o.info.ModTime()) && s.info.Mode() == o.info.Mode()
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
		cfg.AuditMaxMB != old.AuditMaxMB || cfg.AuditKeep != old.AuditKeep || cfg.UserScope != old.UserScope {
		d.log.Error("config reload: authority, client_id, blueprint_app_id, state_dir, socket, secret_store, dev_ca_file, audit_max_mb, audit_keep and user_scope need a restart; keeping the last good config")
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
	// A call that read the old config may have opened a request for a removed agent between the drop above and the
	// swap; from the swap on the consent manager refuses to open one (Options.Configured). Close those now.
	for _, a := range old.Agents {
		if now, still := cfg.Agent(a.Name); !still || now.AppID != a.AppID {
			d.consent.RevokeLocalAgent(a.Name, a.AppID, "agent removed from config")
		}
	}
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
	// A call that read the old policy may have opened a consent request for an excluded agent since the drop above;
	// from SetPolicy on the consent manager refuses to open one (Options.Configured). Close those now.
	for _, a := range d.config().Agents {
		if excluded, why := p.ExcludesAgent(a.AppID); excluded {
			d.consent.RevokeAgent(a.AppID, why)
		}
	}
	refused := func(k cache.Key) bool {
		ok, _ := p.Allows(k.AgentAppID, k.Mode, k.Resource)
		return !ok
	}
	const reason = "the managed policy no longer allows this token"
	recordPolicyPurge(d.audit, d.cache.PurgeMatching(refused, reason), reason)
	if d.store != nil {
		d.tokens.purge(func(s servedToken) bool { return refused(s.Key) })
	}
	if err := d.consent.SetMaxGrant(p.GrantCap()); err != nil {
		d.log.Warn("grants shortened to the managed policy's cap, but not saved", "err", err)
	}
}

// maxPolicyPurgeRecords bounds the records one policy load writes: a policy that refuses everything (an unreadable
// one) purges every token, and the log should say whose, not grow by one line per scope set.
const maxPolicyPurgeRecords = 32

// purgeGroup is what a policy purge record is about: one agent's tokens for one resource, for one user.
type purgeGroup struct{ user, agentName, appID, mode, resource string }

// recordPolicyPurge writes one purge record per agent and resource the purge removed tokens of, at most
// maxPolicyPurgeRecords, then one for the rest: the records say which agents and resources the policy narrowed.
func recordPolicyPurge(l *audit.Log, removed []cache.Key, reason string) {
	counts := map[purgeGroup]int{}
	for _, k := range removed {
		counts[purgeGroup{k.UserOID, k.AgentName, k.AgentAppID, k.Mode, k.Resource}]++
	}
	groups := make([]purgeGroup, 0, len(counts))
	for g := range counts {
		groups = append(groups, g)
	}
	slices.SortFunc(groups, func(a, b purgeGroup) int {
		return cmp.Or(cmp.Compare(a.agentName, b.agentName), cmp.Compare(a.appID, b.appID), cmp.Compare(a.resource, b.resource),
			cmp.Compare(a.mode, b.mode), cmp.Compare(a.user, b.user))
	})
	for i, g := range groups {
		if i == maxPolicyPurgeRecords {
			rest := 0
			for _, g := range groups[i:] {
				rest += counts[g]
			}
			_, _ = l.Append(audit.Record{Event: audit.EventPurge, Outcome: audit.OutcomeOK,
				Reason: fmt.Sprintf("%s (%d more tokens of %d more agent and resource pairs)", reason, rest, len(groups)-i)})
			return
		}
		_, _ = l.Append(audit.Record{Event: audit.EventPurge, Outcome: audit.OutcomeOK, Reason: fmt.Sprintf("%s (%d tokens)", reason, counts[g]),
			User: audit.User{OID: g.user}, Agent: audit.Agent{AppID: g.appID, Name: g.agentName}, Mode: g.mode, Resource: g.resource})
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
