package daemon

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentidd/agentidd/internal/cache"
	"github.com/agentidd/agentidd/internal/config"
	"github.com/agentidd/agentidd/internal/entra"
	"github.com/agentidd/agentidd/internal/store"
	"github.com/agentidd/agentidd/platform"
)

func secretsTestDaemon(dir string) *Daemon {
	return &Daemon{cfg: &config.Config{SecretStore: "file", StateDir: dir, BlueprintAppID: "bp"},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func TestOpenStateGuardedRefusesUntilTold(t *testing.T) {
	cases := []struct {
		name   string
		damage func(t *testing.T, db string, s platform.SecretStore)
		// survivesReset: after store.Reset (what `agentidd reset` does), the next start is fresh without ClearRefusal.
		survivesReset bool
	}{
		{"truncated", func(t *testing.T, db string, _ platform.SecretStore) {
			if err := os.Truncate(db, 512); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"wrong data key", func(t *testing.T, _ string, s platform.SecretStore) {
			k := make([]byte, 32)
			_, _ = rand.Read(k)
			if err := s.Set(platform.DataKeyItem, k); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"missing data key", func(t *testing.T, _ string, s platform.SecretStore) {
			if err := s.Delete(platform.DataKeyItem); err != nil {
				t.Fatal(err)
			}
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			db := filepath.Join(dir, "state.db")
			d := secretsTestDaemon(dir)
			if err := d.openStateGuarded(false); err != nil || d.store == nil {
				t.Fatalf("first open: %v", err)
			}
			if err := d.store.Put("tokens", "k", []byte("v")); err != nil {
				t.Fatal(err)
			}
			d.closeState()
			tc.damage(t, db, d.secrets)

			for start := 1; start <= 2; start++ {
				d = secretsTestDaemon(dir)
				if err := d.openStateGuarded(false); err != nil {
					t.Fatalf("start %d: a refused state file must not stop the daemon: %v", start, err)
				}
				if d.store != nil {
					t.Fatalf("start %d: started on a fresh store without being told", start)
				}
				why := d.secretsDegradedReason()
				if !strings.Contains(why, "agentidd reset") || !strings.Contains(why, "--fresh-on-corrupt") || !strings.Contains(why, ".corrupt-") {
					t.Errorf("start %d: degraded reason does not say what happened and what to do: %q", start, why)
				}
			}
			if m, _ := filepath.Glob(db + ".corrupt-*"); len(m) != 1 {
				t.Fatalf("want one kept-aside file, got %v", m)
			}

			if _, err := store.Reset(db, d.secrets, store.Options{}); err != nil {
				t.Fatal(err)
			}
			d = secretsTestDaemon(dir)
			if err := d.openStateGuarded(false); err != nil {
				t.Fatal(err)
			}
			if (d.store != nil) != !tc.survivesReset {
				t.Fatalf("after reset: store open=%v, want %v", d.store != nil, !tc.survivesReset)
			}
			if d.store == nil {
				// A missing key looks the same before and after a reset: reset must clear the refusal itself.
				if _, err := ClearRefusal(dir); err != nil {
					t.Fatal(err)
				}
				d = secretsTestDaemon(dir)
				if err := d.openStateGuarded(false); err != nil || d.store == nil {
					t.Fatalf("after ClearRefusal: %v", err)
				}
			}
			defer d.closeState()
			if _, err := d.store.Get("tokens", "k"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("fresh store holds old data: %v", err)
			}
			if d.secretsDegradedReason() != "" {
				t.Errorf("fresh store still degraded: %q", d.secretsDegradedReason())
			}
		})
	}
}

func TestOpenStateGuardedFreshWhenTold(t *testing.T) {
	dir := t.TempDir()
	d := secretsTestDaemon(dir)
	if err := d.openStateGuarded(false); err != nil {
		t.Fatal(err)
	}
	d.closeState()
	if err := os.Truncate(filepath.Join(dir, "state.db"), 100); err != nil {
		t.Fatal(err)
	}
	d = secretsTestDaemon(dir)
	if err := d.openStateGuarded(false); err != nil || d.store != nil {
		t.Fatalf("want refused: %v", err)
	}
	d = secretsTestDaemon(dir)
	if err := d.openStateGuarded(true); err != nil || d.store == nil {
		t.Fatalf("--fresh-on-corrupt did not start fresh: %v", err)
	}
	d.closeState()
	if _, err := os.Stat(refusalPath(dir)); !os.IsNotExist(err) {
		t.Errorf("refusal file still there after a fresh start: %v", err)
	}
	// The unreadable bytes are kept, never overwritten.
	aside, _ := filepath.Glob(filepath.Join(dir, "state.db.corrupt-*"))
	if len(aside) != 1 {
		t.Fatalf("kept-aside files: %v", aside)
	}
}

func TestSecretsUnavailableIsNotCorruption(t *testing.T) {
	dir := t.TempDir()
	d := secretsTestDaemon(dir)
	d.cfg.SecretStore = "no-such-backend"
	if err := d.openStateGuarded(false); err != nil {
		t.Fatalf("an unusable secret store must leave the daemon degraded, not stopped: %v", err)
	}
	if d.secrets != nil || d.store != nil || d.refusedReason() != "" {
		t.Fatalf("secrets=%v store=%v refused=%q", d.secrets, d.store, d.refusedReason())
	}
	if _, err := os.Stat(refusalPath(dir)); !os.IsNotExist(err) {
		t.Errorf("refusal written for an unavailable secret store")
	}
}

func TestSecretsWatchRecovers(t *testing.T) {
	cases := []struct {
		name string
		poke bool
	}{{"tick", false}, {"poke", true}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := secretsTestDaemon(t.TempDir())
			var calls atomic.Int32
			s := d.newSecretsRuntime(func() { calls.Add(1) })
			s.interval = time.Hour
			if !tc.poke {
				s.interval = 10 * time.Millisecond
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			done := make(chan struct{})
			go func() { s.watch(ctx); close(done) }()
			if tc.poke {
				s.pokeProbe()
				s.pokeProbe() // never blocks
			}
			<-done
			if calls.Load() != 1 {
				t.Fatalf("recovered called %d times, want 1", calls.Load())
			}
		})
	}
	t.Run("store present: no watch", func(t *testing.T) {
		d := secretsTestDaemon(t.TempDir())
		d.secrets = platform.NewFileSecretStore(t.TempDir())
		s := d.newSecretsRuntime(func() { t.Error("recovered called with a working store") })
		s.watch(context.Background()) // returns at once
	})
	t.Run("still unavailable", func(t *testing.T) {
		d := secretsTestDaemon(t.TempDir())
		d.cfg.SecretStore = "no-such-backend"
		s := d.newSecretsRuntime(func() { t.Error("recovered called while unavailable") })
		s.interval = 5 * time.Millisecond
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Millisecond)
		defer cancel()
		s.watch(ctx)
	})
}

func TestRunRecovering(t *testing.T) {
	boom := errors.New("boom")
	cases := []struct {
		name  string
		seq   []error
		want  error
		calls int
	}{
		{"clean", []error{nil}, nil, 1},
		{"recovers twice", []error{errSecretStoreRecovered, errSecretStoreRecovered, nil}, nil, 3},
		{"error after recovery", []error{errSecretStoreRecovered, boom}, boom, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := 0
			err := runRecovering(context.Background(), func(context.Context) error { n++; return tc.seq[n-1] })
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) || n != tc.calls {
				t.Fatalf("err=%v calls=%d, want %v after %d", err, n, tc.want, tc.calls)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	n := 0
	if err := runRecovering(ctx, func(context.Context) error { n++; return errSecretStoreRecovered }); err != nil || n != 1 {
		t.Fatalf("cancelled: err=%v calls=%d", err, n)
	}
}

func TestSecretsFetchRotation(t *testing.T) {
	invalidClient := &entra.Error{Class: entra.ClassPermanent, Code: "invalid_client", AADSTS: 7000215}
	other := &entra.Error{Class: entra.ClassPermanent, Code: "invalid_grant", AADSTS: 70008}
	cases := []struct {
		name        string
		stored      string // blueprint/<id> at fetch time; the client was built with "old"
		results     []error
		wantErr     bool
		wantCalls   int
		wantResets  int
		wantDeleted bool
	}{
		{"unchanged", "old", []error{nil}, false, 1, 0, false},
		{"rotated: new one used at once", "new", []error{nil}, false, 1, 1, true},
		{"rotated, new one refused", "new", []error{invalidClient, invalidClient}, true, 2, 2, false},
		{"refused, then the re-read secret works", "old", []error{invalidClient, nil}, false, 2, 1, true},
		{"other failure: no retry", "old", []error{other}, true, 1, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := secretsTestDaemon(t.TempDir())
			s := d.newSecretsRuntime(func() {})
			stored := "old"
			s.readSec = func() ([]byte, error) { return []byte(stored), nil }
			if _, err := s.blueprintSecret(); err != nil {
				t.Fatal(err)
			}
			stored = tc.stored
			resets, deleted := 0, false
			s.reset = func() { resets++ }
			s.deleteP = func() error { deleted = true; return nil }
			calls := 0
			_, err := s.fetch(context.Background(), func(context.Context) (cache.Token, error) {
				calls++
				return cache.Token{}, tc.results[calls-1]
			})
			if (err != nil) != tc.wantErr || calls != tc.wantCalls || resets != tc.wantResets || deleted != tc.wantDeleted {
				t.Fatalf("err=%v calls=%d resets=%d deleted=%v", err, calls, resets, deleted)
			}
		})
	}
}

func TestBlueprintSecretMissingSaysWhatToDo(t *testing.T) {
	d := secretsTestDaemon(t.TempDir())
	d.secrets = platform.NewFileSecretStore(t.TempDir())
	s := d.newSecretsRuntime(func() {})
	_, err := s.blueprintSecret()
	if err == nil || !strings.Contains(err.Error(), "agentidd secret set --blueprint bp") {
		t.Fatalf("err = %v", err)
	}
	if err := d.secrets.Set(platform.BlueprintItem("bp"), []byte("s3")); err != nil {
		t.Fatal(err)
	}
	if got, err := s.blueprintSecret(); err != nil || got != "s3" {
		t.Fatalf("got %q, %v", got, err)
	}
	if s.rotated() {
		t.Fatal("rotated right after reading")
	}
	if err := d.secrets.Set(platform.BlueprintItem("bp"), []byte("s4")); err != nil {
		t.Fatal(err)
	}
	if !s.rotated() {
		t.Fatal("rotation not noticed")
	}
}
