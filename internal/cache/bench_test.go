package cache

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

func benchCache(b *testing.B) (*Cache, Key) {
	c := New(Options{})
	k := NewKey("0d3c5a1e-1111-2222-3333-444455556666", "7f0e9c2b-aaaa-bbbb-cccc-ddddeeeeffff", "obo",
		"https://graph.microsoft.com", []string{"Mail.Read", "User.Read"}, "")
	now := time.Now()
	c.Put(k, Token{AccessToken: "eyJ0eXAi", IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
	if _, ok := c.Lookup(k, time.Minute); !ok {
		b.Fatal("no hit")
	}
	return c, k
}

func BenchmarkLookupHit(b *testing.B) {
	c, k := benchCache(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := c.Lookup(k, time.Minute); !ok {
			b.Fatal("miss")
		}
	}
}

func BenchmarkLookupParallel(b *testing.B) {
	c, k := benchCache(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, ok := c.Lookup(k, time.Minute); !ok {
				b.Error("miss")
				return
			}
		}
	})
}

// BenchmarkMemory10k reports the heap held per cached entry, key and indexes included, with realistic field sizes
// (a JWT of about 1.5 kB dominates).
func BenchmarkMemory10k(b *testing.B) {
	const n = 10000
	tok := string(make([]byte, 1500))
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		c := New(Options{MaxPerAgent: -1}) // n tokens of one agent, ten times the default cap
		now := time.Now()
		for i := range n {
			k := NewKey(fmt.Sprintf("0d3c5a1e-1111-2222-3333-%012d", i%50), "7f0e9c2b-aaaa-bbbb-cccc-ddddeeeeffff", "obo",
				"https://graph.microsoft.com", []string{"Mail.Read", fmt.Sprintf("Scope.%d", i)}, "")
			c.Put(k, Token{AccessToken: tok, IssuedAt: now, ExpiresAt: now.Add(time.Hour), GrantID: fmt.Sprintf("g-%d", i%200)})
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/entry")
		runtime.KeepAlive(c)
	}
}
