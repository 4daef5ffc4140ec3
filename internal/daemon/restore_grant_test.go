package daemon

import (
	"encoding/json"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentidd/agentidd/internal/broker"
	"github.com/agentidd/agentidd/internal/cache"
	"github.com/agentidd/agentidd/internal/config"
	"github.com/agentidd/agentidd/internal/consent"
	"github.com/agentidd/agentidd/internal/store"
	"github.com/agentidd/agentidd/platform"
)

// A grant that ends while the daemon is down ends without OnRevoke: the consent state simply no longer loads it, so no
// purge ever names it. Its tokens must not come back at the next start. Restored, one would be served (the cache key
// holds no grant) to a request a later grant for the same scopes authorizes, and revoking that later grant would purge
// nothing, since the token is indexed under the dead one: the revoking call would return with the token still cached,
// on disk, and in the hands of its watchers.
func TestRestoreSkipsTokensOfGrantsThatEndedWhileDown(t *testing.T) {
	dir := t.TempDir()
	secrets := platform.NewFileSecretStore(t.TempDir())
	st, err := store.Open(filepath.Join(dir, "state.db"), secrets, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	log := slog.New(slog.DiscardHandler)
	t0 := time.Now().Round(0)
	clock := t0
	now := func() time.Time { return clock }

	// The previous run: two grants, one for an hour and one for eight, and a token served under each.
	before, err := consent.NewManager(consent.Options{Persist: consentPersist{st: st}, Now: now, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	grant := func(resource string, d time.Duration) consent.Grant {
		g, err := before.GrantByPolicy(consent.Request{UserOID: "u1", AgentAppID: "app1", AgentName: "agent1",
			Resource: resource, Scopes: []string{resource + "/read"}}, d)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	short, long := grant("api://short", consent.OneHour), grant("api://long", consent.EightHours)
	ts := &tokenStore{st: st, log: log}
	key := func(g consent.Grant) cache.Key {
		k := cache.NewKey(g.UserOID, g.AgentAppID, "obo", g.Resource, g.Scopes, "")
		k.AgentName = g.AgentName
		return k
	}
	for _, g := range []consent.Grant{short, long} {
		k := key(g)
		b, err := json.Marshal(servedToken{Version: servedTokenVersion, Key: k, Token: cache.Token{
			AccessToken: "tok-" + g.ID, IssuedAt: t0.Add(50 * time.Minute), ExpiresAt: t0.Add(110 * time.Minute), GrantID: g.ID}})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Put(bucketTokens, k.ID(), b); err != nil {
			t.Fatal(err)
		}
	}

	// Down from before the short grant ended until after: this run loads only the long one.
	clock = t0.Add(70 * time.Minute)
	cm, err := consent.NewManager(consent.Options{Persist: consentPersist{st: st}, Now: now, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(cm.Grants()); n != 1 {
		t.Fatalf("%d grants loaded, want the long one only", n)
	}
	d := &Daemon{log: log, now: now, store: st, tokens: ts, consent: cm,
		cache: cache.New(cache.Options{Now: now, Log: log})}
	b := broker.New(broker.Options{Config: &config.Config{}, Cache: d.cache, Consent: cm, Now: now, Log: log})
	d.restoreTokens(b)

	if tok, ok := d.cache.Peek(key(short)); ok {
		t.Errorf("restored %q, minted under a grant that ended while the daemon was down", tok.AccessToken)
	}
	if _, ok := d.cache.Lookup(key(long), time.Minute); !ok {
		t.Error("the token of the grant still in force was not restored")
	}
	left := map[string]bool{}
	if err := st.ForEach(bucketTokens, func(_ string, v []byte) error {
		var s servedToken
		if err := json.Unmarshal(v, &s); err != nil {
			return err
		}
		left[s.Token.GrantID] = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if left[short.ID] || !left[long.ID] {
		t.Errorf("the store holds tokens of grants %v, want only %s", left, long.ID)
	}
}
