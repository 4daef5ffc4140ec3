package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/agentidd/agentidd/internal/audit"
	"github.com/agentidd/agentidd/internal/cache"
	"github.com/agentidd/agentidd/internal/store"
)

// Buckets of the encrypted store.
const (
	bucketMSAL    = "msal"
	bucketTokens  = "tokens"
	bucketConsent = "consent"
	bucketAudit   = "audit"
)

// msalBlobs backs MSAL's caches (the user's refresh token, blueprint exchange tokens) with the encrypted store.
type msalBlobs struct{ st *store.Store }

func (m msalBlobs) LoadBlob(name string) ([]byte, error) {
	b, err := m.st.Get(bucketMSAL, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	return b, err
}

func (m msalBlobs) SaveBlob(name string, data []byte) error { return m.st.Put(bucketMSAL, name, data) }

// consentPersist keeps grants and remembered denials in the encrypted store.
type consentPersist struct{ st *store.Store }

func (c consentPersist) LoadConsent() ([]byte, error) {
	b, err := c.st.Get(bucketConsent, "state")
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	return b, err
}

func (c consentPersist) SaveConsent(b []byte) error { return c.st.Put(bucketConsent, "state", b) }

// servedToken is one serving-cache entry at rest, with what a refresh after restart needs.
type servedToken struct {
	Version int         `json:"v"`
	Key     cache.Key   `json:"key"`
	Token   cache.Token `json:"token"`
	Claims  string      `json:"claims,omitempty"`
}

const servedTokenVersion = 1

// tokenStore persists served tokens so that a restart while the IdP is down still serves valid ones. Its mutex orders
// saves against purges: a purge clears the cache first and then the store under mu, and a save re-checks the cache under
// mu, so a token revoked while it was being fetched can never be written after its purge (and come back at restart).
type tokenStore struct {
	mu  sync.Mutex
	st  *store.Store
	log *slog.Logger
}

// saveIfCurrent persists tok if it is still the cached token for k.
func (t *tokenStore) saveIfCurrent(c *cache.Cache, k cache.Key, tok cache.Token, claims string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if cur, ok := c.Peek(k); !ok || cur.AccessToken != tok.AccessToken {
		return
	}
	b, err := json.Marshal(servedToken{Version: servedTokenVersion, Key: k, Token: tok, Claims: claims})
	if err == nil {
		err = t.st.Put(bucketTokens, k.ID(), b)
	}
	if err != nil {
		t.log.Warn("could not persist a served token; it will not survive a restart", "err", err)
	}
}

// forget deletes the persisted copies of keys that left the cache on their own (expired, or evicted over the per-agent
// cap), in one transaction. A key that was stored again in the meantime is kept.
func (t *tokenStore) forget(c *cache.Cache, keys []cache.Key) {
	t.mu.Lock()
	defer t.mu.Unlock()
	err := t.st.Update(func(tx *store.Tx) error {
		for _, k := range keys {
			if _, cached := c.Peek(k); cached {
				continue
			}
			if err := tx.Delete(bucketTokens, k.ID()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.log.Warn("could not delete dropped tokens from the store; they are deleted at the next start", "err", err)
	}
}

func (t *tokenStore) remove(k cache.Key) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.st.Delete(bucketTokens, k.ID()); err != nil {
		t.log.Warn("could not delete a purged token from the store", "err", err)
	}
}

// load returns every stored token still valid at now; expired ones are deleted.
func (t *tokenStore) load(now time.Time) []servedToken {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []servedToken
	var expired []string
	err := t.st.ForEach(bucketTokens, func(key string, value []byte) error {
		var s servedToken
		if err := json.Unmarshal(value, &s); err != nil || s.Version != servedTokenVersion {
			expired = append(expired, key)
			return nil
		}
		if !s.Token.ExpiresAt.After(now) {
			expired = append(expired, key)
			return nil
		}
		out = append(out, s)
		return nil
	})
	if err != nil {
		t.log.Warn("reading stored tokens failed", "err", err)
	}
	if err := t.deleteAll(expired); err != nil {
		t.log.Warn("could not delete expired tokens from the store; they are skipped again at the next start",
			"count", len(expired), "err", err)
	}
	return out
}

// purge deletes every stored token that match selects, so a revocation also holds across a restart. The deletes are
// one transaction: one fsync however many tokens a user had (onPermanent holds a flight's waiters until this returns),
// and a crash cannot leave part of a revoked session's tokens to be restored at the next start.
func (t *tokenStore) purge(match func(servedToken) bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var doomed []string
	err := t.st.ForEach(bucketTokens, func(key string, value []byte) error {
		var s servedToken
		if json.Unmarshal(value, &s) != nil || match(s) {
			doomed = append(doomed, key)
		}
		return nil
	})
	if err != nil {
		t.log.Warn("could not read the stored tokens to purge revoked ones; they may be restored at the next start", "err", err)
		return
	}
	if err := t.deleteAll(doomed); err != nil {
		t.log.Warn("could not purge revoked tokens from the store; they may be restored at the next start",
			"count", len(doomed), "err", err)
	}
}

// deleteAll deletes keys from the tokens bucket in one transaction. Callers hold mu.
func (t *tokenStore) deleteAll(keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	return t.st.Update(func(tx *store.Tx) error {
		for _, k := range keys {
			if err := tx.Delete(bucketTokens, k); err != nil {
				return err
			}
		}
		return nil
	})
}

// auditAnchor is the audit log's last (seq, hash), kept in the encrypted store: the hash chain alone cannot tell a log
// rewritten from scratch, or cut short, from a genuine one; the anchor can, up to the last time it was saved.
type auditAnchor struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

func (d *Daemon) loadAuditAnchor() (auditAnchor, bool) {
	if d.store == nil {
		return auditAnchor{}, false
	}
	b, err := d.store.Get(bucketAudit, "head")
	if err != nil {
		return auditAnchor{}, false
	}
	var a auditAnchor
	if json.Unmarshal(b, &a) != nil {
		return auditAnchor{}, false
	}
	return a, true
}

// verifyAudit checks the whole chain and, when an anchor was saved, that the log still reaches it unchanged.
func (d *Daemon) verifyAudit() (int, error) {
	if a, ok := d.loadAuditAnchor(); ok {
		return audit.VerifyAnchor(d.auditPath(), a.Seq, a.Hash)
	}
	return audit.Verify(d.auditPath())
}

// saveAuditAnchor anchors the last line the flush made durable. Not Head: a record appended meanwhile is only in
// memory, and anchoring it would make a crash look like tampering at every later start.
func (d *Daemon) saveAuditAnchor() {
	if d.store == nil || d.audit == nil || d.auditBroken {
		return
	}
	seq, hash, err := d.audit.SyncedHead()
	if err != nil {
		d.log.Warn("audit flush failed", "err", err)
		return
	}
	if a, ok := d.loadAuditAnchor(); ok && a.Seq == seq {
		return
	}
	b, _ := json.Marshal(auditAnchor{Seq: seq, Hash: hash})
	if err := d.store.Put(bucketAudit, "head", b); err != nil {
		d.log.Warn("could not anchor the audit log", "err", err)
	}
}

// every runs fn each interval until ctx ends.
func every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}
