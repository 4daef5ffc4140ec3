package broker

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/internal/cache"
	"github.com/agentidd/agentidd/internal/entra"
	"github.com/agentidd/agentidd/ipc"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// TestOfflineMissAnswer: a miss the cache answered from the offline state is UNAVAILABLE / IDP_UNREACHABLE with the
// time left to the cache's retry, not the full Retry-After of the failure that began the wait, and it is classified
// like that failure.
func TestOfflineMissAnswer(t *testing.T) {
	f := newFixture(t)
	off := &cache.OfflineError{RetryIn: 7 * time.Second, Err: &entra.Error{Class: entra.ClassTransient, Status: 429, RetryAfter: 2 * time.Minute}}
	if c := entra.Classify(off).Class; c != entra.ClassTransient {
		t.Errorf("the offline answer is classified %v, want transient", c)
	}
	err := f.b.fetchError(context.Background(), off)
	if status.Code(err) != codes.Unavailable || reasonOf(err) != ReasonIdPUnreachable || ipc.RetryDelay(err) != 7*time.Second {
		t.Errorf("got %v / %q / retry %v, want UNAVAILABLE / IDP_UNREACHABLE / 7s", status.Code(err), reasonOf(err), ipc.RetryDelay(err))
	}
}

// TestFailedProbeRetryDelay: a miss that reached the IdP and failed while the backoff's step is minutes long is told to
// come back when the next miss may probe (within 30 s), not when the backoff's retry time comes.
func TestFailedProbeRetryDelay(t *testing.T) {
	f := newFixture(t)
	f.b.cache = cache.New(cache.Options{
		Fetch:   func(ctx context.Context, k cache.Key) (cache.Token, error) { return f.b.Fetch(ctx, k) },
		Backoff: cache.Backoff{Min: 4 * time.Minute, Max: 5 * time.Minute},
		Classify: func(err error) cache.Class {
			if entra.Classify(err).Class == entra.ClassTransient {
				return cache.Transient
			}
			return cache.Other
		},
	})
	f.idp.err = &entra.Error{Class: entra.ClassTransient}
	_, err := f.b.GetToken(peerCtx(testPID, testStart), &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{testScope}})
	if d := ipc.RetryDelay(err); reasonOf(err) != ReasonIdPUnreachable || d <= 0 || d > 30*time.Second {
		t.Errorf("got %v, retry %v; want IDP_UNREACHABLE with a retry within 30 s", err, d)
	}
}
