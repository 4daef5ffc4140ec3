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
