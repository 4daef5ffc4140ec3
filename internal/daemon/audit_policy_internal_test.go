package daemon

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentidd/agentidd/internal/audit"
	"github.com/agentidd/agentidd/internal/cache"
)

// TestPolicyPurgeRecordsAreBounded: a policy that refuses everything purges every token; the records name agents and
// resources up to maxPolicyPurgeRecords, and one more sums up the rest, however many there were.
func TestPolicyPurgeRecordsAreBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := audit.Open(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	const groups = maxPolicyPurgeRecords + 8
	var removed []cache.Key
	for i := range groups {
		k := cache.NewKey("u1", "app1", "obo", fmt.Sprintf("api://r%02d", i), []string{"s"}, "")
		k.AgentName = "agent1"
		removed = append(removed, k, k) // a second key of the same agent and resource adds to its count, not a record
	}
	recordPolicyPurge(l, removed, "narrowed")
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	lines, err := audit.Tail(path, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != maxPolicyPurgeRecords+1 {
		t.Fatalf("%d records, want %d", len(lines), maxPolicyPurgeRecords+1)
	}
	for _, want := range []string{`"resource":"api://r00"`, `"name":"agent1"`, `"reason":"narrowed (2 tokens)"`} {
		if !strings.Contains(string(lines[0]), want) {
			t.Errorf("first record %s lacks %s", lines[0], want)
		}
	}
	if last := lines[len(lines)-1]; !strings.Contains(string(last), `narrowed (16 more tokens of 8 more agent and resource pairs)`) {
		t.Errorf("last record %s, want the rest summed up", last)
	}
}
