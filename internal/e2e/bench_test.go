package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
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

// processCPU is the user+system CPU time a process has used so far, from /proc/<pid>/stat.
func processCPU(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the parenthesised command name; utime and stime are fields 14 and 15 (1-based), in clock ticks.
	fields := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const ticksPerSecond = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticksPerSecond
}

// processMemory reads a /proc/<pid>/status field in bytes: VmRSS (all resident memory), RssAnon (heap and stacks) or
// RssFile (file-backed pages, here mostly the bbolt state file's mmap).
func processMemory(b *testing.B, pid int, field string) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, field+":") {
			kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return kb * 1024
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
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
	// BenchmarkDaemonMemory caches 10,000 tokens for one agent, ten times the default per-agent cap.
	e := newEnv(b, envOptions{extraConfig: "rate_limit = 1000000.0\nburst = 1000000\nmax_tokens_per_agent = 10000"})
	e.login()
	c := e.conn()
	e.tokenWithApproval(c, emutest.ResourceScopeRead)
	return e, &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{emutest.ResourceScopeRead}}
}

// warmUp runs every client for a moment before measuring, so that what is measured is the steady state: the daemon's
// stream workers have grown their stacks, and both processes' collectors have paced themselves to the load. Without it
// the first of several runs in one process was up to 15% slower than the rest.
func warmUp(b *testing.B, clients int, call func(i int) error) {
	b.Helper()
	var wg sync.WaitGroup
	stop := time.Now().Add(300 * time.Millisecond)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for time.Now().Before(stop) {
				if err := call(i); err != nil {
					b.Error(err)
					return
				}
			}
		}(i)
	}
	wg.Wait()
}

// BenchmarkSocket measures a cached GetToken over the real Unix socket against the raw gRPC floor: an empty unary RPC
// (health check) to the same daemon process over the same transport. Clients = concurrent goroutines, each with its
// own connection. `make bench` runs it twice: as the scheduler places the two processes, and pinned, the daemon on
// one core (AGENTIDD_BENCH_DAEMON_CPU) and the clients on the other (taskset), which takes the scheduler's placement
// noise out of the comparison.
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
				warmUp(b, clients, call)
				var lat latencies
				var wg sync.WaitGroup
				cpu0 := processCPU(b, e.daemon.Process.Pid)
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
				b.ReportMetric(float64((processCPU(b, e.daemon.Process.Pid)-cpu0).Microseconds())/float64(len(lat.all)), "server-cpu-µs/call")
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

// BenchmarkMiss measures a token exchange the daemon cannot serve from its cache (force_refresh), against the emulator
// answering at once and with 50 ms of injected latency per token request.
func BenchmarkMiss(b *testing.B) {
	e, req := benchEnv(b)
	c := e.conn()
	forced := &agentidv1.GetTokenRequest{Agent: req.Agent, Scopes: req.Scopes, ForceRefresh: true}
	for _, latency := range []int{0, 50} {
		b.Run(fmt.Sprintf("idp-latency=%dms", latency), func(b *testing.B) {
			e.emu.ClearFaults()
			if latency > 0 {
				if err := e.emu.InjectFault(emutest.Fault{Endpoint: "token", Kind: "latency", LatencyMS: latency}); err != nil {
					b.Fatal(err)
				}
			}
			var lat latencies
			local := make([]time.Duration, 0, b.N)
			start := time.Now()
			for b.Loop() {
				t0 := time.Now()
				if _, err := c.Agent.GetToken(context.Background(), forced); err != nil {
					b.Fatal(err)
				}
				local = append(local, time.Since(t0))
			}
			lat.add(local)
			lat.report(b, time.Since(start))
		})
	}
	e.emu.ClearFaults()
}

// mappedRSS is the resident memory of the mappings of path in a process, from /proc/<pid>/smaps: how much of the
// daemon's RSS is its own executable's pages.
func mappedRSS(b *testing.B, pid int, path string) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		b.Fatal(err)
	}
	var total int64
	inPath := false
	for _, line := range strings.Split(string(raw), "\n") {
		fields := strings.Fields(line)
		switch {
		case len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":"):
			inPath = len(fields) >= 6 && fields[5] == path
		case inPath && len(fields) == 3 && fields[0] == "Rss:":
			kb, _ := strconv.ParseInt(fields[1], 10, 64)
			total += kb * 1024
		}
	}
	return total
}

// BenchmarkDaemonMemory fills the serving cache with 10,000 distinct tokens (distinct claims challenges make distinct
// keys) and reports the daemon's resident memory, beside the same daemon's at idle (signed in, one token) and how much
// of it is the executable's own pages.
func BenchmarkDaemonMemory(b *testing.B) {
	e, req := benchEnv(b)
	pid := e.daemon.Process.Pid
	idle := processMemory(b, pid, "VmRSS")
	const tokens = 10_000
	const workers = 16
	for b.Loop() {
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				c := e.conn()
				for i := w; i < tokens; i += workers {
					r := &agentidv1.GetTokenRequest{Agent: req.Agent, Scopes: req.Scopes,
						Claims: fmt.Sprintf(`{"access_token":{"nbf":{"essential":true,"value":"%d"}}}`, i)}
					if _, err := c.Agent.GetToken(context.Background(), r); err != nil {
						b.Error(err)
						return
					}
				}
			}(w)
		}
		wg.Wait()
	}
	b.ReportMetric(float64(idle)/(1<<20), "idle-RSS-MiB")
	b.ReportMetric(float64(processMemory(b, pid, "VmRSS"))/(1<<20), "RSS-MiB")
	b.ReportMetric(float64(mappedRSS(b, pid, e.agentidd))/(1<<20), "executable-MiB")
	b.ReportMetric(float64(processMemory(b, pid, "RssAnon"))/(1<<20), "RssAnon-MiB")
	b.ReportMetric(float64(processMemory(b, pid, "RssFile"))/(1<<20), "RssFile-MiB")
}
