package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/agentidd/agentidd/internal/cache"
	"github.com/agentidd/agentidd/internal/entra"
	"github.com/agentidd/agentidd/internal/fsutil"
	"github.com/agentidd/agentidd/internal/store"
	"github.com/agentidd/agentidd/platform"
)

// This file holds the daemon's handling of its secrets: the refusal to run on a state file it could not read, the
// periodic re-probe of a missing or locked secret store, and blueprint secret rotation.

// refusalName is written next to state.db when the state file could not be read and the user has not said to start
// over. Without it, the next start would find no state.db (the store moved it aside) and silently start fresh.
const refusalName = "state.db.refused"

// PreviousSecretSuffix names where `agentidd secret set` keeps the secret it replaced (blueprint/<id>.previous) until
// the daemon has used the new one successfully.
const PreviousSecretSuffix = ".previous"

// secretProbeInterval is how often a degraded daemon looks for its secret store again.
const secretProbeInterval = 10 * time.Second

// errSecretStoreRecovered ends one run of the daemon so that it starts again, in the same process, with the secret
// store it was missing: every component that persists state is built once, at start, around the store.
var errSecretStoreRecovered = errors.New("the secret store became available")

// refusal is the content of the refusal file: enough to report, and to tell whether the user has since reset.
type refusal struct {
	Version int       `json:"v"`
	At      time.Time `json:"at"`
	Path    string    `json:"path"`
	MovedTo string    `json:"moved_to,omitempty"`
	Cause   string    `json:"cause"`
	// KeyPrint identifies the data key that was in the secret store when the file was refused ("" when there was
	// none): `agentidd reset` deletes the key, so a different print means the user started over on purpose. It is a
	// truncated hash of a random 256-bit key, which says nothing about the key.
	KeyPrint string `json:"key_print"`
}

const refusalVersion = 1

func keyPrint(secrets platform.SecretStore) (string, error) {
	key, err := secrets.Get(platform.DataKeyItem)
	if errors.Is(err, platform.ErrSecretNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(append([]byte("agentidd key print\x00"), key...))
	return hex.EncodeToString(sum[:8]), nil
}

func (r *refusal) text() string {
	where := "it is still at " + r.Path
	if r.MovedTo != "" {
		where = "it was moved aside, unchanged, to " + r.MovedTo
	}
	return fmt.Sprintf("the state file could not be read (%s); %s. Nothing was deleted, and agentidd will not start over "+
		"on its own: to start over (sign in again, re-approve agents) stop agentidd and run `agentidd reset`, or start it "+
		"once with `agentidd run --fresh-on-corrupt`; to recover instead, put the right data key back in the secret store "+
		"and move the file back to %s (docs/secrets.md)", r.Cause, where, r.Path)
}

func refusalPath(stateDir string) string { return filepath.Join(stateDir, refusalName) }

func readRefusal(stateDir string) (*refusal, error) {
	b, err := os.ReadFile(refusalPath(stateDir))
	if err != nil {
		return nil, err
	}
	var r refusal
	if err := json.Unmarshal(b, &r); err != nil || r.Version != refusalVersion {
		// Unreadable or from a newer agentidd: still a refusal, with what can be said.
		return &refusal{Version: refusalVersion, Path: filepath.Join(stateDir, "state.db"), Cause: "see " + refusalPath(stateDir),
			KeyPrint: "unknown"}, nil
	}
	return &r, nil
}

func writeRefusal(stateDir string, r *refusal) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(refusalPath(stateDir), b, 0o600)
}

// ClearRefusal forgets a refused state file; `agentidd reset` calls it so that the next start begins empty. It returns
// where the daemon kept the refused file, if it recorded that, so the user is told where their old state is.
func ClearRefusal(stateDir string) (keptAt string, err error) {
	if r, err := readRefusal(stateDir); err == nil && r != nil {
		keptAt = r.MovedTo
	}
	err = os.Remove(refusalPath(stateDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("removing %s: %w", refusalPath(stateDir), err)
	}
	return keptAt, nil
}

// openStateGuarded opens the secret store and the encrypted state; it replaces openState. An unreachable or locked
// secret store leaves the daemon degraded (d.secrets stays nil), as before. A state file that cannot be read is moved
// aside by the store and refused: the daemon then runs degraded (d.store stays nil) with the reason from
// refusedReason, until the user resets, restores the file, or passes freshOnCorrupt.
func (d *Daemon) openStateGuarded(freshOnCorrupt bool) error {
	secrets, err := platform.OpenSecretStore(d.cfg.SecretStore, d.cfg.StateDir)
	if err == nil {
		err = platform.ProbeSecretStore(secrets)
	}
	if err != nil {
		d.log.Error("secret store unavailable; starting degraded", "err", err)
		return nil
	}
	d.secrets = secrets
	path := filepath.Join(d.cfg.StateDir, "state.db")

	if r, err := readRefusal(d.cfg.StateDir); err == nil {
		cleared, why := refusalCleared(r, path, secrets, freshOnCorrupt)
		if !cleared {
			d.log.Error("refusing to start over on an unreadable state file", "reason", r.text())
			return nil
		}
		d.log.Warn("the earlier unreadable state file no longer blocks the start", "why", why, "kept_at", r.MovedTo)
		if _, err := ClearRefusal(d.cfg.StateDir); err != nil {
			return err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("reading %s: %w", refusalPath(d.cfg.StateDir), err)
	}

	st, err := store.Open(path, secrets, store.Options{FreshOnCorrupt: freshOnCorrupt, Logger: d.log})
	var corrupt *store.CorruptError
	if errors.As(err, &corrupt) {
		r := &refusal{Version: refusalVersion, At: time.Now().UTC(), Path: path, MovedTo: corrupt.MovedTo, Cause: corrupt.Err.Error()}
		if r.KeyPrint, err = keyPrint(secrets); err != nil {
			return fmt.Errorf("reading the data key after refusing the state file: %w", err)
		}
		if err := writeRefusal(d.cfg.StateDir, r); err != nil {
			// Without the marker the next start would be fresh: better not to run at all.
			return fmt.Errorf("%w (and recording the refusal failed: %v)", corrupt, err)
		}
		d.log.Error("the state file could not be read; serving nothing until the user decides", "path", path,
			"moved_to", corrupt.MovedTo, "cause", corrupt.Err.Error(), "what_to_do", "agentidd reset, or agentidd run --fresh-on-corrupt")
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening encrypted state: %w", err)
	}
	if m := st.MovedAside(); m != nil {
		d.log.Warn("started fresh as told; the unreadable state file was kept", "moved_to", m.MovedTo, "cause", m.Err.Error())
	}
	d.store = st
	d.tokens = &tokenStore{st: st, log: d.log}
	return nil
}

// refusalCleared decides whether an earlier refusal still holds.
func refusalCleared(r *refusal, path string, secrets platform.SecretStore, fresh bool) (bool, string) {
	if fresh {
		return true, "started with --fresh-on-corrupt"
	}
	if _, err := os.Lstat(path); err == nil {
		// The user moved a file back: the store checks it again and refuses again if it still cannot be read.
		return true, "a state file is back in place"
	}
	print, err := keyPrint(secrets)
	if err != nil {
		return false, ""
	}
	if r.KeyPrint != "unknown" && print != r.KeyPrint {
		return true, "the data key changed since (agentidd reset)"
	}
	return false, ""
}

// refusedReason is the degraded text when the state file was refused, "" otherwise.
func (d *Daemon) refusedReason() string {
	if d.secrets == nil || d.store != nil {
		return ""
	}
	r, err := readRefusal(d.config().StateDir)
	if err != nil {
		return ""
	}
	return r.text()
}

// secretsDegradedReason is every reason the daemon cannot serve; it replaces degradedReason at start.
func (d *Daemon) secretsDegradedReason() string {
	if why := d.degradedReason(); why != "" {
		return why
	}
	return d.refusedReason()
}

// secretsRuntime is the daemon's live secret handling: the re-probe while degraded and blueprint rotation.
type secretsRuntime struct {
	d        *Daemon
	interval time.Duration
	poke     chan struct{}
	// recovered is called once when a missing secret store is reachable again; Run restarts itself on it.
	recovered func()
	once      sync.Once

	// rotation: the blueprint secret handed to entra last, and whether it was the one in blueprint/<id>.
	rotMu   sync.Mutex
	inUse   string
	readSec func() ([]byte, error)
	deleteP func() error
	reset   func()
}

// newSecretsRuntime is called once per run, after openStateGuarded and before entra.New. recovered must make Run end
// with errSecretStoreRecovered (see runRecovering).
func (d *Daemon) newSecretsRuntime(recovered func()) *secretsRuntime {
	s := &secretsRuntime{d: d, interval: secretProbeInterval, poke: make(chan struct{}, 1), recovered: recovered}
	item := platform.BlueprintItem(d.cfg.BlueprintAppID)
	s.readSec = func() ([]byte, error) {
		if d.secrets == nil {
			return nil, errors.New("secret store unavailable")
		}
		return d.secrets.Get(item)
	}
	s.deleteP = func() error {
		if d.secrets == nil {
			return nil
		}
		return d.secrets.Delete(item + PreviousSecretSuffix)
	}
	s.reset = func() {
		if d.idp != nil {
			d.idp.ResetCredentials()
		}
	}
	return s
}

// watch re-probes a missing secret store every interval, and at once when poked (Admin.Status). It returns at once
// when the store was there at start or the state file was refused (a probe cannot fix that).
func (s *secretsRuntime) watch(ctx context.Context) {
	if s.d.secrets != nil {
		return
	}
	s.d.log.Info("secret store watch started", "interval", s.interval.String())
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.poke:
		}
		sec, err := platform.OpenSecretStore(s.d.config().SecretStore, s.d.config().StateDir)
		if err == nil {
			err = platform.ProbeSecretStore(sec)
		}
		if err != nil {
			s.d.log.Debug("secret store still unavailable", "err", err)
			continue
		}
		s.d.log.Info("secret store available again; restarting the daemon's components in-process", "backend", sec.Describe())
		s.once.Do(s.recovered)
		return
	}
}

// pokeProbe asks the watch to probe now; Admin.Status calls it so that `agentidd status` after unlocking the keyring
// does not wait for the next tick. It never blocks.
func (s *secretsRuntime) pokeProbe() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// runRecovering runs the daemon again each time a run ends because its secret store came back.
func runRecovering(ctx context.Context, run func(context.Context) error) error {
	for {
		err := run(ctx)
		if !errors.Is(err, errSecretStoreRecovered) || ctx.Err() != nil {
			if errors.Is(err, errSecretStoreRecovered) {
				return nil
			}
			return err
		}
	}
}

// blueprintSecret is entra.Config.BlueprintSecret: it reads blueprint/<id> and remembers what it handed out, so that a
// rotation (`agentidd secret set --blueprint`) is noticed on the next fetch. PEM content is returned as is: entra
// builds a certificate credential from it.
func (s *secretsRuntime) blueprintSecret() (string, error) {
	b, err := s.readSec()
	if errors.Is(err, platform.ErrSecretNotFound) {
		id := s.d.cfg.BlueprintAppID
		return "", fmt.Errorf("%w for blueprint %s: run `agentidd secret set --blueprint %s`", entra.ErrNoCredential, id, id)
	}
	if err != nil {
		return "", err
	}
	s.rotMu.Lock()
	s.inUse = string(b)
	s.rotMu.Unlock()
	return string(b), nil
}

// rotated reports whether blueprint/<id> differs from the secret the IdP client was built with.
func (s *secretsRuntime) rotated() bool {
	b, err := s.readSec()
	if err != nil {
		return false
	}
	s.rotMu.Lock()
	defer s.rotMu.Unlock()
	return s.inUse != "" && s.inUse != string(b)
}

// fetch wraps the cache's fetch from the IdP. A rotated blueprint secret is used from this fetch on; a fetch refused
// with invalid_client (AADSTS7000215, a wrong or expired secret) re-reads the secret and is retried once; after a
// success with a rotated secret, the old one (blueprint/<id>.previous) is deleted.
func (s *secretsRuntime) fetch(ctx context.Context, f func(context.Context) (cache.Token, error)) (cache.Token, error) {
	rotated := s.rotated()
	if rotated {
		s.d.log.Info("the blueprint secret was rotated; using the new one")
		s.reset()
	}
	tok, err := f(ctx)
	if err != nil && isInvalidClient(err) {
		s.d.log.Warn("the identity provider refused the blueprint secret; reading it again and retrying once")
		s.reset()
		rotated = true
		tok, err = f(ctx)
	}
	if err == nil && rotated {
		if derr := s.deleteP(); derr != nil {
			s.d.log.Warn("could not delete the previous blueprint secret", "err", derr)
		}
	}
	return tok, err
}

func isInvalidClient(err error) bool {
	var e *entra.Error
	if errors.As(err, &e) {
		return e.AADSTS == 7000215 || (e.Code == "invalid_client" && e.AADSTS == 0)
	}
	return strings.Contains(err.Error(), "AADSTS7000215")
}
