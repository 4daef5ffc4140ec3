package e2e

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// latencies collects per-call durations for percentiles; one per benchmark run, appended under a lock only at the end
// of each client's loop so the measurement does not contend.
type latencies struct {
	mu  sync.Mutex
	all []time.Duration
}

func (l *latencies) add(d []time.Duration) {
	l.mu.Lock()
	l.all = append(l.all, d...)
	l.mu.Unlock()
}

func (l *latencies) report(b *testing.B, elapsed time.Duration) {
	if len(l.all) == 0 {
		return
	}
	slices.Sort(l.all)
	pct := func(p float64) float64 { return float64(l.all[int(float64(len(l.all)-1)*p)].Microseconds()) }
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(float64(len(l.all))/elapsed.Seconds(), "calls/s")
}

// benchEnv is one daemon with a signed-in user and an approved grant, shared by the socket benchmarks.
func benchEnv(b *testing.B) (*env, *agentidv1.GetTokenRequest) {
	// The per-agent rate limit would (correctly) refuse a benchmark's load; lift it to measure the serving path.
	e := newEnv(b, envOptions{extraConfig: "rate_limit = 1000000.0\nburst = 1000000"})
	e.login()
	c := e.conn()
	e.tokenWithApproval(c, emutest.ResourceScopeRead)
	return e, &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{emutest.ResourceScopeRead}}
}

// BenchmarkSocket measures a cached GetToken over the real Unix socket against the raw gRPC floor: an empty unary RPC
// (health check) to the same daemon process over the same transport. Clients = concurrent goroutines, each with its
// own connection.
func BenchmarkSocket(b *testing.B) {
	e, req := benchEnv(b)
	for _, clients := range []int{1, 8, 64} {
		conns := make([]*agentidv1.AgentIdentityClient, clients)
		health := make([]healthpb.HealthClient, clients)
		for i := range conns {
			c := e.conn()
			ac := c.Agent
			conns[i] = &ac
			health[i] = healthpb.NewHealthClient(c.GRPC())
		}
		run := func(name string, call func(i int) error) {
			b.Run(fmt.Sprintf("%s/clients=%d", name, clients), func(b *testing.B) {
				var lat latencies
				var wg sync.WaitGroup
				per := b.N/clients + 1
				b.ResetTimer()
				start := time.Now()
				for i := 0; i < clients; i++ {
					wg.Add(1)
					go func(i int) {
						defer wg.Done()
						local := make([]time.Duration, 0, per)
						for n := 0; n < per; n++ {
							t0 := time.Now()
							if err := call(i); err != nil {
								b.Error(err)
								return
							}
							local = append(local, time.Since(t0))
						}
						lat.add(local)
					}(i)
				}
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				lat.report(b, elapsed)
			})
		}
		ctx := context.Background()
		run("floor-health", func(i int) error {
			_, err := health[i].Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		})
		run("GetToken-cached", func(i int) error {
			resp, err := (*conns[i]).GetToken(ctx, req)
			if err == nil && resp.GetSource() != agentidv1.TokenSource_TOKEN_SOURCE_CACHE {
				return fmt.Errorf("not served from cache")
			}
			return err
		})
	}
}
