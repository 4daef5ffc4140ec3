package daemon

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentidd/agentidd/internal/cache"
	"github.com/agentidd/agentidd/internal/store"
	"github.com/agentidd/agentidd/platform"
)

// purgeEnv is a state file holding tokens of two users, half of them "doomed".
type purgeEnv struct {
	path    string
	secrets platform.SecretStore
	now     time.Time
}

const purgeSecretPrefix = "eyJ.purge-test-secret-"

func newPurgeEnv(t *testing.T, perUser int) *purgeEnv {
	t.Helper()
	e := &purgeEnv{path: filepath.Join(t.TempDir(), "state.db"), secrets: platform.NewFileSecretStore(t.TempDir()),
		now: time.Now()}
	st := e.open(t)
	defer st.Close()
	err := st.Update(func(tx *store.Tx) error {
		for _, user := range []string{"doomed", "kept"} {
			for i := range perUser {
				k := cache.Key{UserOID: user, AgentAppID: "agent", Mode: "obo", Resource: fmt.Sprintf("api://r%d", i),
					Scopes: []string{"s"}}
				expires := e.now.Add(time.Hour)
				if i%4 == 0 {
					expires = e.now.Add(-time.Minute) // for load: already expired
				}
				b, err := json.Marshal(servedToken{Version: servedTokenVersion, Key: k,
					Token: cache.Token{AccessToken: purgeSecretPrefix + user + fmt.Sprint(i), ExpiresAt: expires}})
				if err != nil {
					return err
				}
				if err := tx.Put(bucketTokens, k.ID(), b); err != nil {
					return err
				}
			}
		}
		return tx.Put(bucketTokens, "not-json", []byte("{"))
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *purgeEnv) open(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(e.path, e.secrets, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// commits is the id of the last committed bbolt transaction: each commit, and so each fsync, adds one.
func (e *purgeEnv) commits(t *testing.T) int {
	t.Helper()
	db, err := bolt.Open(e.path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tx, err := db.Begin(false)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	return tx.ID()
}

// commitsFor runs fn on the store opened afresh and returns how many commits fn made, not counting what Open and
// Close themselves commit.
func (e *purgeEnv) commitsFor(t *testing.T, fn func(*tokenStore)) int {
	t.Helper()
	before := e.commits(t)
	e.open(t).Close()
	openCost := e.commits(t) - before

	before = e.commits(t)
	st := e.open(t)
	fn(&tokenStore{st: st, log: slog.New(slog.DiscardHandler)})
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	return e.commits(t) - before - openCost
}

func (e *purgeEnv) users(t *testing.T) map[string]int {
	t.Helper()
	st := e.open(t)
	defer st.Close()
	got := map[string]int{}
	err := st.ForEach(bucketTokens, func(_ string, v []byte) error {
		var s servedToken
		if json.Unmarshal(v, &s) != nil {
			got["undecodable"]++
		} else {
			got[s.Key.UserOID]++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestPurgeIsOneTransaction: purging many tokens commits once, so a revocation is not slowed by one fsync per token
// while tokenStore.mu is held, and a crash cannot leave half of them to be restored at the next start.
func TestPurgeIsOneTransaction(t *testing.T) {
	e := newPurgeEnv(t, 200)
	n := e.commitsFor(t, func(ts *tokenStore) {
		ts.purge(func(s servedToken) bool { return s.Key.UserOID == "doomed" })
	})
	if n != 1 {
		t.Errorf("purge of 201 tokens made %d commits, want 1", n)
	}
	if got := e.users(t); got["doomed"] != 0 || got["undecodable"] != 0 || got["kept"] != 200 {
		t.Errorf("after the purge the store holds %v, want only 200 of kept", got)
	}
	if n := e.commitsFor(t, func(ts *tokenStore) { ts.purge(func(servedToken) bool { return false }) }); n != 0 {
		t.Errorf("a purge that matches nothing made %d commits", n)
	}
}

// TestLoadDeletesExpiredInOneTransaction: the start-up sweep of expired tokens commits once as well.
func TestLoadDeletesExpiredInOneTransaction(t *testing.T) {
	e := newPurgeEnv(t, 200)
	var loaded []servedToken
	n := e.commitsFor(t, func(ts *tokenStore) { loaded = ts.load(e.now) })
	if n != 1 {
		t.Errorf("load deleting 101 expired tokens made %d commits, want 1", n)
	}
	if len(loaded) != 300 {
		t.Errorf("load returned %d tokens, want 300", len(loaded))
	}
	if got := e.users(t); got["doomed"] != 150 || got["kept"] != 150 || got["undecodable"] != 0 {
		t.Errorf("after load the store holds %v", got)
	}
}

// TestPurgeFailureIsLogged: a purge that cannot delete says so (never with a token), and deletes all or nothing.
func TestPurgeFailureIsLogged(t *testing.T) {
	for _, tt := range []struct {
		name string
		// broken runs after the tokens were read, before anything is deleted.
		broken func(*store.Store)
	}{
		{"store unreadable", nil},
		{"delete fails", func(st *store.Store) { _ = st.Close() }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newPurgeEnv(t, 20)
			st := e.open(t)
			if tt.broken == nil {
				_ = st.Close() // ForEach now fails
			}
			var logs bytes.Buffer
			ts := &tokenStore{st: st, log: slog.New(slog.NewTextHandler(&logs, nil))}
			calls := 0
			ts.purge(func(s servedToken) bool {
				if calls++; calls == 1 && tt.broken != nil {
					tt.broken(st)
				}
				return s.Key.UserOID == "doomed"
			})
			_ = st.Close()
			if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "purge") {
				t.Errorf("purge failure not logged: %q", logs.String())
			}
			if strings.Contains(logs.String(), purgeSecretPrefix) {
				t.Errorf("a token value reached the log: %q", logs.String())
			}
			if got := e.users(t); got["doomed"] != 20 || got["kept"] != 20 {
				t.Errorf("after the failed purge the store holds %v, want everything", got)
			}
		})
	}
}
