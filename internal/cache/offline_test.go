package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// errThrottled is a transient failure that carries a Retry-After of throttleFor.
var errThrottled = fmt.Errorf("fake: throttled: %w", errTransient)

const throttleFor = 20 * time.Second

func offlineHarness(t *testing.T, b Backoff) *harness {
	return throttledHarness(t, b, throttleFor)
}

// throttledHarness is offlineHarness with errThrottled carrying a Retry-After of throttle.
func throttledHarness(t *testing.T, b Backoff, throttle time.Duration) *harness {
	return newHarness(t, false, func(o *Options) {
		o.Backoff = b
		o.RetryAfter = func(err error) time.Duration {
			if errors.Is(err, errThrottled) {
				return throttle
			}
			return 0
		}
	})
}

// missAll runs one Get per key at once and returns their errors once all have answered.
func missAll(h *harness, keys []Key, force bool) []error {
	errs := make([]error, len(keys))
	var wg sync.WaitGroup
	for i, k := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, errs[i] = h.c.Get(context.Background(), k, time.Minute, force)
		}()
	}
	wg.Wait()
	return errs
}

func keysFrom(from, n int) []Key {
	var out []Key
	for i := from; i < from+n; i++ {
		out = append(out, testKey(i))
	}
	return out
}

// wantGated checks that err is the offline answer: classified by what made the cache offline, with a retry delay in
// (0, max].
func wantGated(t *testing.T, err error, cause error, max time.Duration) {
	t.Helper()
	var off *OfflineError
	if !errors.As(err, &off) || !errors.Is(err, cause) {
		t.Fatalf("err = %v, want the offline answer wrapping %v", err, cause)
	}
	if off.RetryIn <= 0 || off.RetryIn > max {
		t.Errorf("retry in %v, want in (0, %v]", off.RetryIn, max)
	}
}

// TestOfflineFailuresCountedOncePerWindow: ten exchanges failing together are one failed retry window, not ten: the
// retry time stays at the first backoff step instead of growing to minutes.
func TestOfflineFailuresCountedOncePerWindow(t *testing.T) {
	h := offlineHarness(t, Backoff{Min: time.Second, Max: 5 * time.Minute})
	h.idp.setErr(errTransient)
	h.idp.gate = make(chan struct{})
	keys := keysFrom(1, 10)
	done := make(chan []error)
	go func() { done <- missAll(h, keys, false) }()
	for h.idp.inflight.Load() < int64(len(keys)) {
		time.Sleep(time.Millisecond)
	}
	close(h.idp.gate)
	for i, err := range <-done {
		if !errors.Is(err, errTransient) {
			t.Fatalf("miss %d: %v, want the fetch's transient error", i, err)
		}
	}
	online, retry := h.c.Online()
	if online {
		t.Fatal("online after ten transient failures")
	}
	if d := retry.Sub(t0); d <= 0 || d > time.Second {
		t.Errorf("retry in %v after one window's failures, want the first step (at most 1s)", d)
	}
	h.c.mu.Lock()
	failures := h.c.failures
	h.c.mu.Unlock()
	if failures != 1 {
		t.Errorf("failures = %d, want 1: one window, however many requests failed in it", failures)
	}
}

// TestOfflineMissGate: offline, misses (and force_refresh) before the retry time fail at once without asking the IdP;
// the first miss after it is a probe, alone even while it is out, whose success ends the offline state.
func TestOfflineMissGate(t *testing.T) {
	h := offlineHarness(t, Backoff{Min: time.Second, Max: 5 * time.Minute})
	h.idp.setErr(errTransient)
	if _, _, err := h.c.Get(context.Background(), testKey(0), time.Minute, false); !errors.Is(err, errTransient) {
		t.Fatalf("first miss: %v", err)
	}
	_, retry := h.c.Online()
	for _, err := range missAll(h, keysFrom(1, 10), false) {
		wantGated(t, err, errTransient, retry.Sub(t0))
	}
	for _, err := range missAll(h, keysFrom(0, 1), true) {
		wantGated(t, err, errTransient, retry.Sub(t0))
	}
	if n := h.idp.calls.Load(); n != 1 {
		t.Fatalf("fetches = %d, want 1: misses before the retry time must not reach the IdP", n)
	}

	// The retry time comes; the IdP is still down. One miss asks it; its failure opens the next, longer window
	// (1..2s, the second backoff step).
	h.clk.Set(retry)
	if _, _, err := h.c.Get(context.Background(), testKey(1), time.Minute, false); !errors.Is(err, errTransient) || errors.As(err, new(*OfflineError)) {
		t.Fatalf("miss at the retry time: %v, want the IdP's failure", err)
	}
	_, retry2 := h.c.Online()
	if d := retry2.Sub(retry); d < time.Second || d > 2*time.Second {
		t.Errorf("second window %v, want 1..2s", d)
	}

	// The IdP is back but slow to answer: the probe is alone while it is out.
	h.clk.Set(retry2)
	h.idp.setErr(nil)
	h.idp.gate = make(chan struct{})
	probe := make(chan error)
	go func() {
		_, _, err := h.c.Get(context.Background(), testKey(2), time.Minute, false)
		probe <- err
	}()
	for h.idp.inflight.Load() < 1 {
		time.Sleep(time.Millisecond)
	}
	for _, err := range missAll(h, keysFrom(3, 5), false) {
		wantGated(t, err, errTransient, time.Second)
	}
	if n := h.idp.calls.Load(); n != 3 {
		t.Fatalf("fetches = %d, want 3: one probe at a time", n)
	}
	close(h.idp.gate)
	if err := <-probe; err != nil {
		t.Fatalf("probe: %v", err)
	}
	if online, _ := h.c.Online(); !online {
		t.Fatal("still offline after the probe succeeded")
	}
	for _, err := range missAll(h, keysFrom(3, 5), false) {
		if err != nil {
			t.Errorf("miss after recovery: %v", err)
		}
	}
}

// TestOfflineMissGateBounded: however long the retry time of our own backoff, a miss goes to the
// IdP 30 s after the latest failure, so a recovered IdP is noticed within 30 s. The probe's failure does not lengthen
// the backoff again within the window.
func TestOfflineMissGateBounded(t *testing.T) {
	h := offlineHarness(t, Backoff{Min: 4 * time.Minute, Max: 5 * time.Minute})
	h.idp.setErr(errTransient)
	if _, _, err := h.c.Get(context.Background(), testKey(0), time.Minute, false); !errors.Is(err, errTransient) {
		t.Fatalf("first miss: %v", err)
	}
	_, retry := h.c.Online()
	if retry.Sub(t0) < 2*time.Minute {
		t.Fatalf("retry in %v, want minutes (the backoff's first step)", retry.Sub(t0))
	}
	h.clk.Set(t0.Add(missGate - time.Second))
	// Told to come back when the probe may go, not when the backoff's minutes run out.
	wantGated(t, missAll(h, keysFrom(1, 1), false)[0], errTransient, time.Second)
	if n := h.idp.calls.Load(); n != 1 {
		t.Fatalf("fetches = %d before 30 s, want 1", n)
	}

	h.clk.Set(t0.Add(missGate))
	if err := missAll(h, keysFrom(1, 1), false)[0]; errors.As(err, new(*OfflineError)) || !errors.Is(err, errTransient) {
		t.Fatalf("miss 30 s after the failure: %v, want a probe at the IdP", err)
	}
	if _, r := h.c.Online(); !r.Equal(retry) {
		t.Errorf("the probe's failure moved the retry time from %v to %v within the window", retry, r)
	}
	h.clk.Set(t0.Add(missGate + missGate/2))
	wantGated(t, missAll(h, keysFrom(2, 1), false)[0], errTransient, missGate/2)
	if n := h.idp.calls.Load(); n != 2 {
		t.Fatalf("fetches = %d, want 2: one probe per 30 s", n)
	}

	h.idp.setErr(nil)
	h.clk.Set(t0.Add(2 * missGate))
	if _, _, err := h.c.Get(context.Background(), testKey(2), time.Minute, false); err != nil {
		t.Fatalf("recovered IdP not asked 30 s after the last failure: %v", err)
	}
	if online, _ := h.c.Online(); !online {
		t.Error("still offline after the probe succeeded")
	}
}

// TestOfflineRetryAfterHonoured: the IdP's Retry-After sets the retry time when it is longer than the backoff step, for
// misses as for refreshes.
func TestOfflineRetryAfterHonoured(t *testing.T) {
	h := offlineHarness(t, Backoff{Min: time.Second, Max: 5 * time.Minute})
	h.idp.setErr(errThrottled)
	if _, _, err := h.c.Get(context.Background(), testKey(0), time.Minute, true); !errors.Is(err, errThrottled) {
		t.Fatalf("first miss: %v", err)
	}
	if _, retry := h.c.Online(); !retry.Equal(t0.Add(throttleFor)) {
		t.Fatalf("retry at +%v, want the Retry-After, +%v", retry.Sub(t0), throttleFor)
	}
	h.clk.Set(t0.Add(throttleFor - time.Second))
	wantGated(t, missAll(h, keysFrom(1, 1), true)[0], errThrottled, time.Second)
	if n := h.idp.calls.Load(); n != 1 {
		t.Fatalf("fetches = %d within the Retry-After, want 1", n)
	}
	h.idp.setErr(nil)
	h.clk.Set(t0.Add(throttleFor))
	if _, _, err := h.c.Get(context.Background(), testKey(1), time.Minute, true); err != nil {
		t.Fatalf("miss after the Retry-After: %v", err)
	}
}

// TestOfflineLongRetryAfterNotProbed: an IdP that asked for more than 30 s (Retry-After) is not probed by a miss before
// that time, and gated misses are told how long is left of it.
func TestOfflineLongRetryAfterNotProbed(t *testing.T) {
	h := throttledHarness(t, Backoff{Min: time.Second, Max: 5 * time.Minute}, 2*time.Minute)
	h.idp.setErr(errThrottled)
	if _, _, err := h.c.Get(context.Background(), testKey(0), time.Minute, true); !errors.Is(err, errThrottled) {
		t.Fatalf("first miss: %v", err)
	}
	h.clk.Set(t0.Add(missGate + time.Second))
	wantGated(t, missAll(h, keysFrom(1, 1), true)[0], errThrottled, 2*time.Minute-missGate-time.Second)
	if n := h.idp.calls.Load(); n != 1 {
		t.Fatalf("fetches = %d within a 2-minute Retry-After, want 1", n)
	}
	h.idp.setErr(nil)
	h.clk.Set(t0.Add(2 * time.Minute))
	if _, _, err := h.c.Get(context.Background(), testKey(1), time.Minute, true); err != nil {
		t.Fatalf("miss after the Retry-After: %v", err)
	}
}

// TestOfflineAnswerPutsOnline: a probe the IdP answers with a refusal or a challenge shows the IdP reachable: the cache
// is online again and other misses go to the IdP, rather than being held back as IDP_UNREACHABLE until some fetch
// succeeds. A failure decided locally (Answered reports false) proves nothing and keeps the gate.
func TestOfflineAnswerPutsOnline(t *testing.T) {
	for _, tc := range []struct {
		name       string
		err        error
		wantOnline bool
	}{
		{"interaction", errInteraction, true},
		{"permanent", errPermanent, true},
		{"local", errLocal, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, false, func(o *Options) {
				o.Backoff = Backoff{Min: time.Second, Max: 5 * time.Minute}
				o.Answered = func(err error) bool { return errors.Is(err, errInteraction) || errors.Is(err, errPermanent) }
			})
			h.idp.setErr(errTransient)
			if _, _, err := h.c.Get(context.Background(), testKey(0), time.Minute, false); !errors.Is(err, errTransient) {
				t.Fatalf("first miss: %v", err)
			}
			_, retry := h.c.Online()
			h.clk.Set(retry)
			h.idp.setErr(tc.err)
			if _, _, err := h.c.Get(context.Background(), testKey(1), time.Minute, false); !errors.Is(err, tc.err) {
				t.Fatalf("probe: %v", err)
			}
			if online, _ := h.c.Online(); online != tc.wantOnline {
				t.Fatalf("online = %v after the probe got %v, want %v", online, tc.err, tc.wantOnline)
			}
			if !tc.wantOnline {
				return
			}
			// A miss arriving while another agent's slow exchange is out goes to the IdP too, rather than being held
			// back behind it as if that exchange were a probe of an IdP that is down.
			h.idp.setErr(nil)
			h.idp.gate = make(chan struct{})
			errs := make(chan error, 2)
			get := func(i int) { _, _, err := h.c.Get(context.Background(), testKey(i), time.Minute, false); errs <- err }
			go get(2)
			waitFor(t, func() bool { return h.idp.inflight.Load() == 1 })
			go get(3)
			deadline := time.Now().Add(5 * time.Second)
			for h.idp.inflight.Load() < 2 && len(errs) == 0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			close(h.idp.gate)
			for range 2 {
				if err := <-errs; err != nil {
					t.Errorf("miss beside a slow exchange after the IdP answered: %v", err)
				}
			}
		})
	}
}

// TestOfflineRetryAfterEndsWithTheOutage: a Retry-After belongs to the outage that sent it. Once the IdP has answered
// again (here an exchange that was already out when the 429 came), a later failure without one gates misses by our own
// backoff, not by what is left of the old Retry-After.
func TestOfflineRetryAfterEndsWithTheOutage(t *testing.T) {
	h := throttledHarness(t, Backoff{Min: time.Second, Max: 5 * time.Minute}, 5*time.Minute)
	h.c.mu.Lock()
	h.c.noteErrorLocked(Transient, errThrottled, t0)
	h.c.noteSuccessLocked()
	h.c.mu.Unlock()
	h.clk.Set(t0.Add(time.Minute))
	h.idp.setErr(errTransient)
	if _, _, err := h.c.Get(context.Background(), testKey(2), time.Minute, false); !errors.Is(err, errTransient) {
		t.Fatalf("blip: %v", err)
	}
	wantGated(t, missAll(h, keysFrom(3, 1), false)[0], errTransient, missGate)
}
