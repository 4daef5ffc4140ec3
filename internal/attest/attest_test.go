package attest

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/agentidd/agentidd/platform"
)

// fakeInspector is a process table and a file-hash table.
type fakeInspector struct {
	procs   map[int]platform.Process
	digests map[string]string
	hashErr error
}

func (f *fakeInspector) Inspect(pid int) (platform.Process, error) {
	p, ok := f.procs[pid]
	if !ok {
		return platform.Process{}, fmt.Errorf("pid %d: %w", pid, platform.ErrNoSuchProcess)
	}
	return p, nil
}

func (f *fakeInspector) ExeDigest(path string) (string, error) {
	if f.hashErr != nil {
		return "", f.hashErr
	}
	d, ok := f.digests[path]
	if !ok {
		return "", errors.New("no such file")
	}
	return d, nil
}

func (f *fakeInspector) Ancestors(pid, max int) ([]int, error) {
	var out []int
	for len(out) < max {
		p, ok := f.procs[pid]
		if !ok {
			return out, fmt.Errorf("pid %d: %w", pid, platform.ErrNoSuchProcess)
		}
		if p.PPID <= 0 {
			break
		}
		out = append(out, p.PPID)
		pid = p.PPID
	}
	return out, nil
}

const (
	hashA = "aaaaaaaaaaaa1111111111111111111111111111111111111111111111111111"
	hashB = "bbbbbbbbbbbb2222222222222222222222222222222222222222222222222222"
)

func TestAttestExe(t *testing.T) {
	agent := Agent{Name: "coder", AppID: "app-1", Bindings: []Binding{
		{ExePath: "/opt/coder/bin/coder", SHA256: hashA},
		{ExePath: "/usr/local/bin/coder-beta", SHA256: strings.ToUpper(hashB)},
	}}
	tests := []struct {
		name     string
		exe      string
		digest   string
		hashErr  error
		wantVia  string
		wantSubs []string // in the error message
	}{
		{name: "path and hash match", exe: "/opt/coder/bin/coder", digest: hashA, wantVia: ViaExe},
		{name: "second binding, hash case ignored", exe: "/usr/local/bin/coder-beta", digest: hashB, wantVia: ViaExe},
		{name: "unclean path still matches", exe: "/opt/coder/bin/../bin/coder", digest: hashA, wantVia: ViaExe},
		{
			name: "one byte changed", exe: "/opt/coder/bin/coder", digest: "cccccccccccc" + hashA[12:],
			wantSubs: []string{"/opt/coder/bin/coder", "cccccccccccc", "aaaaaaaaaaaa", "does not match"},
		},
		{
			name: "unbound path", exe: "/tmp/evil", digest: hashA,
			wantSubs: []string{"/tmp/evil", "none of the agent's bound paths"},
		},
		{name: "hash error", exe: "/opt/coder/bin/coder", hashErr: errors.New("too large")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ins := &fakeInspector{digests: map[string]string{tt.exe: tt.digest}, hashErr: tt.hashErr}
			res, err := New(ins).Attest(platform.Process{PID: 10, PPID: 1, ExePath: tt.exe, StartTime: 5}, agent)
			if tt.wantVia != "" {
				if err != nil {
					t.Fatalf("Attest: %v", err)
				}
				if res.Via != tt.wantVia || res.Agent != "coder" || res.ExePath != tt.exe || res.SHA256 != tt.digest {
					t.Fatalf("Result = %+v", res)
				}
				return
			}
			if err == nil {
				t.Fatalf("Attest succeeded: %+v", res)
			}
			if tt.hashErr != nil {
				if !errors.Is(err, tt.hashErr) {
					t.Fatalf("err = %v, want the hash error", err)
				}
				return
			}
			var na *NotAttestedError
			if !errors.As(err, &na) {
				t.Fatalf("err = %T %v, want *NotAttestedError", err, err)
			}
			for _, s := range tt.wantSubs {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("message %q lacks %q", err, s)
				}
			}
			// Only prefixes, never whole hashes.
			if strings.Contains(err.Error(), hashA) || strings.Contains(err.Error(), tt.digest) {
				t.Errorf("message %q contains a full hash", err)
			}
		})
	}
}

func TestAttestLaunch(t *testing.T) {
	// 100 (agentidd exec, start 7) -> 200 (shell) -> 300 (the agent).
	// 400 is an unrelated process; 500 descends from a pid-100 impostor
	// (same pid as the root, different start time).
	procs := map[int]platform.Process{
		1:   {PID: 1},
		100: {PID: 100, PPID: 1, StartTime: 7, ExePath: "/usr/bin/agentidd"},
		200: {PID: 200, PPID: 100, StartTime: 8, ExePath: "/bin/sh"},
		300: {PID: 300, PPID: 200, StartTime: 9, ExePath: "/usr/bin/python3"},
		400: {PID: 400, PPID: 1, StartTime: 3, ExePath: "/usr/bin/python3"},
	}
	ins := &fakeInspector{procs: procs, digests: map[string]string{"/usr/bin/python3": hashB}}
	a := New(ins)
	_, revoke := a.RegisterLaunch("coder", 100, 7)
	agent := Agent{Name: "coder"}

	tests := []struct {
		name    string
		peer    platform.Process
		agent   Agent
		wantVia string
	}{
		{"grandchild of the launch", procs[300], agent, ViaLaunch},
		{"the launch root itself", procs[100], agent, ViaLaunch},
		{"unrelated pid", procs[400], agent, ""},
		{"other agent name", procs[300], Agent{Name: "other"}, ""},
		{"root pid with another start time", platform.Process{PID: 100, PPID: 1, StartTime: 99}, agent, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := a.Attest(tt.peer, tt.agent)
			if tt.wantVia == "" {
				var na *NotAttestedError
				if !errors.As(err, &na) {
					t.Fatalf("Attest = %+v, %v; want *NotAttestedError", res, err)
				}
				return
			}
			if err != nil || res.Via != tt.wantVia {
				t.Fatalf("Attest = %+v, %v; want via %s", res, err, tt.wantVia)
			}
		})
	}

	// The launch root exits and its pid is reused: descendants of the new
	// process must not inherit the binding.
	procs[100] = platform.Process{PID: 100, PPID: 1, StartTime: 70}
	if _, err := a.Attest(procs[300], agent); err == nil {
		t.Fatal("attested through a reused root pid")
	}
	procs[100] = platform.Process{PID: 100, PPID: 1, StartTime: 7}

	revoke()
	revoke() // idempotent
	if _, err := a.Attest(procs[300], agent); err == nil {
		t.Fatal("attested after revoke")
	}
}

func TestRegisterLaunchTokensDiffer(t *testing.T) {
	a := New(&fakeInspector{})
	t1, r1 := a.RegisterLaunch("x", 1, 1)
	t2, r2 := a.RegisterLaunch("x", 1, 1)
	defer r1()
	defer r2()
	if t1 == t2 || len(t1) != 32 {
		t.Fatalf("tokens %q %q", t1, t2)
	}
}
