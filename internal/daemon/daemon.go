// Package daemon wires agentidd together and owns its lifecycle: config and reload, the secret and state stores, the
// IdP client, the serving cache, consent, audit, and the gRPC server on the local endpoint.
package daemon

import (
	_ "github.com/agentidd/agentidd/platform/osimpl"

	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/agentidd/agentidd/internal/attest"
	"github.com/agentidd/agentidd/internal/audit"
	"github.com/agentidd/agentidd/internal/broker"
	"github.com/agentidd/agentidd/internal/cache"
	"github.com/agentidd/agentidd/internal/config"
	"github.com/agentidd/agentidd/internal/consent"
	"github.com/agentidd/agentidd/internal/entra"
	"github.com/agentidd/agentidd/internal/store"
	"github.com/agentidd/agentidd/ipc"
	"github.com/agentidd/agentidd/platform"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// Version is set by the linker for a release; a build from a checkout says "dev" and the commit (VersionString).
var Version = "dev"

// VersionString is Version, and for a "dev" build the VCS revision Go recorded in the binary (with "+dirty" when the
// tree had uncommitted changes), so a bug report names the code it ran.
func VersionString() string {
	if Version != "dev" {
		return Version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return Version
	}
	var rev, dirty string
	for _, s := range info.Settings {
		switch {
		case s.Key == "vcs.revision" && len(s.Value) >= 12:
			rev = s.Value[:12]
		case s.Key == "vcs.modified" && s.Value == "true":
			dirty = "+dirty"
		}
	}
	if rev == "" {
		return Version
	}
	return Version + " (" + rev + dirty + ")"
}

// maxRequestBytes bounds one request message: a GetTokenRequest is well under 16 KiB even with a claims challenge.
const maxRequestBytes = 64 << 10

// Options configures Run.
type Options struct {
	ConfigPath string
	Log        *slog.Logger
	// FreshOnCorrupt starts with empty state when the state file cannot be read (agentidd run --fresh-on-corrupt).
	FreshOnCorrupt bool
	// Clock is the wall clock the daemon plans by: token expiry and refresh ahead, grants, restored state. Default
	// time.Now; tests move it to play a suspend or reach a refresh window without waiting for it.
	Clock func() time.Time
}

// Daemon is one running agentidd.
type Daemon struct {
	cfgPath  string
	log      *slog.Logger
	cfgMu    sync.Mutex
	cfg      *config.Config
	secrets  platform.SecretStore
	store    *store.Store
	idp      *entra.Client
	cache    *cache.Cache
	consent  *consent.Manager
	audit    *audit.Log
	broker   *broker.Broker
	tokens   *tokenStore
	endpoint string
	selfExe  string
	selfHash string
	inspect  platform.ProcessInspector
	now      func() time.Time
	alerts   *alerter
	refusals *idpRefusals
	started  time.Time
	sec      *secretsRuntime
	// auditBroken freezes the audit anchor once the log failed verification, so the evidence is not overwritten.
	auditBroken bool
}

// Run starts the daemon and serves until ctx is cancelled. Cancellation is a clean shutdown, not an error.
func Run(ctx context.Context, o Options) error {
	return runRecovering(ctx, func(ctx context.Context) error { return run(ctx, o) })
}

func run(ctx context.Context, o Options) error {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	d := &Daemon{cfgPath: o.ConfigPath, log: o.Log, now: o.Clock, started: time.Now()}
	cfg, err := config.Load(o.ConfigPath)
	if err != nil {
		return err
	}
	d.cfg = cfg
	if err := d.makeStateDir(cfg.StateDir); err != nil {
		return err
	}
	d.inspect = platform.NewProcessInspector()
	if d.selfExe, err = os.Executable(); err != nil {
		return fmt.Errorf("finding own executable: %w", err)
	}
	if d.selfExe, err = filepath.EvalSymlinks(d.selfExe); err != nil {
		return fmt.Errorf("resolving own executable: %w", err)
	}
	if d.selfHash, err = d.inspect.ExeDigest(d.selfExe); err != nil {
		return fmt.Errorf("hashing own executable: %w", err)
	}

	if err := d.openStateGuarded(o.FreshOnCorrupt); err != nil {
		return err
	}
	defer d.closeState()
	recovered := make(chan struct{})
	d.sec = d.newSecretsRuntime(func() { close(recovered) })

	httpClient, err := idpHTTPClient(cfg)
	if err != nil {
		return err
	}
	d.idp, err = entra.New(entra.Config{
		Authority: cfg.Authority, ClientID: cfg.ClientID, BlueprintAppID: cfg.BlueprintAppID,
		UserScopes: []string{cfg.UserScope}, HTTPClient: httpClient, DevAuthority: cfg.DevCAFile != "",
		Blobs: d.blobs(), BlueprintSecret: d.sec.blueprintSecret,
	})
	if err != nil {
		return err
	}
	if d.store != nil {
		if a, err := d.idp.RestoreAccount(ctx); err != nil {
			d.log.Warn("could not restore the previous sign-in", "err", err)
		} else if a != nil {
			d.log.Info("restored sign-in", "user_oid", a.OID)
		}
	}

	if d.audit, err = audit.Open(filepath.Join(cfg.StateDir, "audit.jsonl"),
		audit.Options{MaxSize: int64(cfg.AuditMaxMB) << 20, Keep: cfg.AuditKeep}); err != nil {
		return fmt.Errorf("opening audit log: %w", err)
	}
	defer d.audit.Close()
	if n, err := d.verifyAudit(); err != nil {
		// Reported, not fatal: refusing to start would hide the evidence behind an outage. Status and audit verify say it.
		d.log.Error("the audit log does not verify: it was edited, truncated or rewritten", "records", n, "err", err)
		d.auditBroken = true
	}
	defer d.saveAuditAnchor()

	var b *broker.Broker
	d.refusals = newIdPRefusals(d.now, d.idp.Account, d.sec.rotated)
	d.cache = cache.New(cache.Options{
		// A subject the IdP refused moments ago is answered from memory: see refusalMemory.
		Fetch: func(ctx context.Context, k cache.Key) (cache.Token, error) {
			return d.refusals.fetch(ctx, k, func(ctx context.Context) (cache.Token, error) {
				return d.sec.fetch(ctx, func(ctx context.Context) (cache.Token, error) { return b.Fetch(ctx, k) })
			})
		},
		OnStored: func(k cache.Key, t cache.Token) {
			if d.store != nil {
				d.tokens.saveIfCurrent(d.cache, k, t, b.ClaimsFor(k))
			}
		},
		OnDropped: func(keys []cache.Key) {
			if d.store != nil {
				d.tokens.forget(d.cache, keys)
			}
		},
		RefreshWindow: cfg.RefreshWindow.Duration,
		MaxPerAgent:   cfg.MaxTokensPerAgent,
		Classify:      classifyForCache,
		RetryAfter:    func(err error) time.Duration { return entra.Classify(err).RetryAfter },
		Answered:      idpAnswered,
		OnPermanent:   d.onPermanent,
		Now:           d.now,
		Log:           d.log,
	})
	policy := d.loadPolicy()
	prompter := platform.NewPrompter()
	d.alerts = newAlerter(prompter, d.now, d.log)
	d.consent, err = consent.NewManager(consent.Options{
		MaxGrant:     policy.GrantCap(),
		Prompter:     prompter,
		Persist:      d.consentPersister(),
		DenyCooldown: cfg.DenyCooldown.Duration,
		OnRevoke:     d.onGrantRevoked,
		OnDecision:   d.onConsentDecision,
		WatchExit:    d.taskExitWatcher(),
		// d.broker is built after the manager; no request reaches Check before it is.
		Configured: func(name, appID string) bool { return d.broker.AgentConfigured(name, appID) },
		Now:        d.now,
		Log:        d.log,
	})
	if err != nil {
		return fmt.Errorf("loading consent state: %w", err)
	}
	b = broker.New(broker.Options{Config: cfg, IdP: d.idp, Cache: d.cache, Consent: d.consent, Audit: d.audit,
		Attestor: attest.New(d.inspect), Inspector: d.inspect, Now: d.now, Log: d.log})
	d.broker = b
	// Fail closed: a token whose record cannot be kept is not issued (docs/consent.md, Audit log).
	d.audit.OnFailure(func(err error) {
		b.SetAuditFailed("the audit log cannot be written (" + err.Error() + "); no token is issued unrecorded: free space in the state directory and restart agentidd")
	})
	d.applyPolicy(policy)
	if why := d.secretsDegradedReason(); why != "" {
		b.SetDegraded(why)
	}
	d.restoreTokens(b)

	endpoint, err := listenEndpoint(cfg)
	if err != nil {
		return err
	}
	ln, err := ipc.Listen(endpoint)
	if err != nil {
		return err
	}
	d.endpoint = endpoint

	const localWindow = 1 << 20
	srv := grpc.NewServer(
		grpc.Creds(ipc.ServerCredentials()),
		grpc.MaxRecvMsgSize(maxRequestBytes),
		// A fixed pool of stream goroutines keeps its grown stacks: a fresh goroutine per call paid for growing its
		// stack through the interceptors and the broker on every cached GetToken. Bursts beyond the pool still get
		// goroutines of their own.
		grpc.NumStreamWorkers(uint32(4*runtime.GOMAXPROCS(0))),
		// A fixed window turns off bandwidth-delay estimation pings, which a local socket gains nothing from.
		grpc.InitialWindowSize(localWindow),
		grpc.InitialConnWindowSize(localWindow),
		grpc.ChainUnaryInterceptor(ipc.UnaryGuard(), d.adminGateUnary),
		grpc.ChainStreamInterceptor(ipc.StreamGuard(), d.adminGateStream),
	)
	agentidv1.RegisterAgentIdentityServer(srv, b)
	agentidv1.RegisterAdminServer(srv, &admin{d: d})
	hs := health.NewServer()
	hs.SetServingStatus("agentid.v1.AgentIdentity", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go d.cache.Start(runCtx)
	go d.consent.ExpireLoop(runCtx)
	go d.watchConfig(runCtx)
	go d.watchPolicy(runCtx)
	go d.sec.watch(runCtx)
	// The anchor is saved once more at shutdown (deferred above); refresh bookkeeping of keys that left the cache is
	// dropped once a minute.
	go every(runCtx, 10*time.Second, d.saveAuditAnchor)
	go every(runCtx, time.Minute, func() { d.broker.SweepKeyInfo() })

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	d.log.Info("agentidd is serving", "endpoint", endpoint, "pid", os.Getpid(), "version", VersionString())

	restart := false
	select {
	case <-ctx.Done():
	case <-recovered:
		restart = true
	case err := <-serveErr:
		if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serving: %w", err)
		}
	}
	d.log.Info("shutting down")
	hs.Shutdown()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(3 * time.Second):
		srv.Stop() // watchers hold streams open forever; don't let them block shutdown
	}
	_ = ln.Close()
	if restart {
		return errSecretStoreRecovered
	}
	return nil
}

// makeStateDir creates the state directory private to the user, and makes an existing one private: MkdirAll leaves a
// directory made earlier by hand or an older install as it was, and one open to other users lets them list what the
// files' own modes do not hide (the audit log's rotated files, a "file" secret store's entries) or swap a file by
// rename. The store narrows its directory too, but only once the secret store opens, and silently: the audit log is
// opened either way, and a mode changed under the user should be said. Windows has no mode bits here; the
// directory's ACL is the user profile's.
func (d *Daemon) makeStateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	if runtime.GOOS == "windows" {
		return nil
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("checking state directory: %w", err)
	}
	if was := fi.Mode().Perm(); was&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("state directory %s has mode %#o and cannot be made 0700 (%w): chmod 700 it, or set state_dir to a directory of yours", dir, was, err)
		}
		d.log.Warn("state directory mode tightened to 0700", "dir", dir, "was", fmt.Sprintf("%#o", was))
	}
	return nil
}

func (d *Daemon) closeState() {
	if d.store != nil {
		if err := d.store.Close(); err != nil {
			d.log.Warn("closing state", "err", err)
		}
	}
}

func (d *Daemon) degradedReason() string {
	if d.secrets != nil {
		return ""
	}
	secrets, err := platform.OpenSecretStore(d.cfg.SecretStore, d.cfg.StateDir)
	if err == nil {
		err = platform.ProbeSecretStore(secrets)
	}
	var unavailable *platform.SecretStoreUnavailableError
	if errors.As(err, &unavailable) {
		return fmt.Sprintf("secret store unavailable (%s: %s): %s", unavailable.Backend, unavailable.Reason, unavailable.Remedy)
	}
	return "secret store unavailable: start or unlock the OS keyring, or opt in to secret_store = \"file\""
}

func (d *Daemon) blobs() entra.BlobStore {
	if d.store == nil {
		return nil
	}
	return msalBlobs{st: d.store}
}

func (d *Daemon) consentPersister() consent.Persister {
	if d.store == nil {
		return nil
	}
	return consentPersist{st: d.store}
}

// restoreTokens puts still-valid served tokens back into the cache, so they are served at once even with the IdP down.
// Tokens of grants that are gone are deleted instead: a grant that expired while the daemon was down ended without
// OnRevoke, so no purge names it, and its token, restored, would be served under a later grant for the same key
// without being indexed under it (revoking that grant would not purge it).
func (d *Daemon) restoreTokens(b *broker.Broker) {
	if d.store == nil {
		return
	}
	live := map[string]bool{}
	for _, g := range d.consent.Grants() {
		live[g.ID] = true
	}
	d.tokens.purge(func(s servedToken) bool { return !live[s.Token.GrantID] })
	n := 0
	for _, s := range d.tokens.load(d.now()) {
		if !live[s.Token.GrantID] {
			continue // the delete above failed (it only logs): still never restore a dead grant's token
		}
		b.Remember(s.Key, s.Token.GrantID, s.Claims)
		d.cache.Put(s.Key, s.Token)
		n++
	}
	if n > 0 {
		d.log.Info("restored served tokens from the encrypted store", "count", n)
	}
}

// onGrantRevoked runs before a revocation returns: the cache and the store are purged first.
func (d *Daemon) onGrantRevoked(g consent.Grant, reason string) {
	n := d.cache.PurgeGrant(g.ID, reason)
	d.broker.ForgetGrant(g.ID)
	if d.store != nil {
		d.tokens.purge(func(s servedToken) bool { return s.Token.GrantID == g.ID })
	}
	_, _ = d.audit.Append(audit.Record{Event: audit.EventGrantRevoked, Outcome: audit.OutcomeOK, Reason: reason, GrantID: g.ID,
		TaskID: g.TaskID, Chain: g.Chain, User: d.auditUser(g.UserOID), Agent: audit.Agent{AppID: g.AgentAppID, Name: g.AgentName},
		Mode: g.Mode, Resource: g.Resource, Scopes: g.Scopes})
	d.log.Info("grant revoked", "grant", g.ID, "reason", reason, "purged_tokens", n)
}

// onConsentDecision writes the two-principal record of a consent decision, however it was made (prompt or terminal).
func (d *Daemon) onConsentDecision(dec consent.Decision) {
	r := audit.Record{Event: audit.EventConsentDenied, Outcome: audit.OutcomeDenied, Reason: dec.Reason, RequestID: dec.Request.ID,
		User: audit.User{OID: dec.Request.UserOID, UPN: dec.Request.UserUPN}, Agent: audit.Agent{AppID: dec.Request.AgentAppID, Name: dec.Request.AgentName},
		Chain: dec.Request.Chain, Mode: dec.Request.Mode, Resource: dec.Request.Resource, Scopes: dec.Request.Scopes, TaskID: dec.Request.TaskID,
		Peer: audit.Peer{PID: dec.Request.Process.PID, UID: dec.Request.Process.User, Exe: dec.Request.Process.ExePath,
			SHA256: dec.Request.Process.SHA256Prefix}}
	if dec.Allowed {
		r.Event, r.Outcome = audit.EventConsentApproved, audit.OutcomeOK
		if dec.Grant != nil {
			r.GrantID = dec.Grant.ID
		}
	}
	r.Source = dec.Via
	_, _ = d.audit.Append(r)
}

// onPermanent widens a permanent refresh failure to every token derived from the condemned principal. A refusal of an
// agent or user handled within refusalMemory is not handled again: the cache has dropped the failed key, and the
// subject's other tokens were purged, alerted, audited and logged the first time.
func (d *Daemon) onPermanent(k cache.Key, err error) {
	r, first := d.refusals.claim(k, err)
	if !first {
		return
	}
	if r != nil {
		defer close(r.handled)
	}
	e := entra.Classify(err)
	var n int
	switch e.Subject {
	case entra.SubjectUser:
		n = d.cache.PurgeUser(k.UserOID, "sign-in revoked: "+e.Error())
		if d.store != nil {
			d.tokens.purge(func(s servedToken) bool { return s.Key.UserOID == k.UserOID })
		}
		who := k.UserOID
		if a := d.idp.Account(); a != nil && a.OID == k.UserOID && a.UPN != "" {
			who = a.UPN
		}
		d.alerts.alert("user:"+k.UserOID, "agentidd: sign in again",
			"Your sign-in as "+who+" is no longer valid ("+strings.TrimSuffix(e.Error(), ".")+"). Agents cannot get tokens for you until you run: agentidd login")
	case entra.SubjectAgent:
		n = d.cache.PurgeAgent(k.AgentAppID, "agent identity refused: "+e.Error())
		if d.store != nil {
			d.tokens.purge(func(s servedToken) bool { return s.Key.AgentAppID == k.AgentAppID })
		}
		var names []string // several configured agents may share one agent identity
		for _, a := range d.config().Agents {
			if a.AppID == k.AgentAppID {
				names = append(names, a.Name)
			}
		}
		d.alerts.alert("agent:"+k.AgentAppID, "agentidd: an agent identity was refused",
			"The identity provider refused agent identity "+k.AgentAppID+" ("+strings.Join(names, ", ")+"): "+
				strings.TrimSuffix(e.Error(), ".")+". Those agents get no tokens until that is fixed: check the agent in Entra and the blueprint credential (agentidd secret set).")
	default:
		if d.store != nil {
			d.tokens.remove(k)
		}
	}
	_, _ = d.audit.Append(audit.Record{Event: audit.EventPurge, Outcome: audit.OutcomeOK, Reason: e.Error(), User: audit.User{OID: k.UserOID},
		Agent: audit.Agent{AppID: k.AgentAppID, Name: k.AgentName}, Mode: k.Mode, Resource: k.Resource, Scopes: k.Scopes})
	attrs := []any{"class", e.Class.String(), "purged", n}
	if r != nil {
		attrs = append(attrs, "refusal_remembered_for", refusalMemory.String())
	}
	d.log.Warn("permanent identity provider failure; purged derived tokens", attrs...)
}

func classifyForCache(err error) cache.Class {
	if errors.Is(err, broker.ErrGrantGone) {
		return cache.Permanent // no grant: the key must go, whoever asked
	}
	switch entra.Classify(err).Class {
	case entra.ClassTransient:
		return cache.Transient
	case entra.ClassPermanent:
		return cache.Permanent
	case entra.ClassInteraction:
		return cache.Interaction
	}
	return cache.Other
}

// idpAnswered reports whether a failed fetch got an answer from the IdP itself: an OAuth error with an HTTP status, not
// a refusal answered from memory nor one decided here (no grant, no credential).
func idpAnswered(err error) bool {
	var remembered *rememberedError
	if errors.As(err, &remembered) || errors.Is(err, broker.ErrGrantGone) {
		return false
	}
	e := entra.Classify(err)
	return e.Status != 0 && e.Class != entra.ClassTransient
}

// idpHTTPClient trusts the emulator's CA only when the config names it (dev mode); otherwise the system roots.
func idpHTTPClient(cfg *config.Config) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ResponseHeaderTimeout = 20 * time.Second
	if cfg.DevCAFile != "" {
		pem, err := os.ReadFile(cfg.DevCAFile)
		if err != nil {
			return nil, fmt.Errorf("reading dev_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("dev_ca_file %s holds no PEM certificate", cfg.DevCAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, nil
}

// listenEndpoint is where the daemon listens, in the order every client and the CLI look for it: $AGENTIDD_SOCKET
// (which `agentidd run --socket` sets), then the config's socket, then the OS default. Were the config to come first, a
// daemon would listen where agents told by the environment do not look.
func listenEndpoint(cfg *config.Config) (string, error) {
	if p := os.Getenv(ipc.EnvSocket); p != "" {
		return p, nil
	}
	if cfg.Socket != "" {
		return cfg.Socket, nil
	}
	return ipc.DefaultPath()
}
