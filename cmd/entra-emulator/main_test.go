package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/public"

	"github.com/agentidd/agentidd/internal/entraemu/emutest"
)

// TestProgramContract runs the binary as other engineers will: one JSON line with exactly the documented keys and
// nothing else on stdout, the CA file readable, exit 0 on SIGTERM.
func TestProgramContract(t *testing.T) {
	bin := emutest.Build(t)
	dir := t.TempDir()
	cmd := exec.Command(bin, "--state-dir", dir)
	var stderr bytes.Buffer
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("reading ready line: %v; stderr: %s", err, stderr.String())
	}
	var ready map[string]any
	if err := json.Unmarshal([]byte(line), &ready); err != nil {
		t.Fatalf("ready line %q: %v", line, err)
	}
	var keys []string
	for k := range ready {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if want := []string{"admin_token", "admin_url", "authority", "ca_file", "pid", "tenant", "url"}; !slices.Equal(keys, want) {
		t.Errorf("keys = %v, want %v", keys, want)
	}
	url, _ := ready["url"].(string)
	if !strings.HasPrefix(url, "https://127.0.0.1:") || ready["authority"] != url+"/"+emutest.DefaultTenantID ||
		ready["admin_url"] != url+"/_admin" || ready["ca_file"] != filepath.Join(dir, "ca.pem") || ready["pid"] != float64(cmd.Process.Pid) {
		t.Errorf("ready = %v", ready)
	}
	if fi, err := os.Stat(filepath.Join(dir, "ca.pem")); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("ca.pem: %v %v", fi, err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	rest := make(chan []byte, 1)
	go func() { b := new(bytes.Buffer); _, _ = b.ReadFrom(pr); rest <- b.Bytes() }()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v; stderr: %s", err, stderr.String())
	}
	if extra := <-rest; len(extra) != 0 {
		t.Errorf("stdout had more than one line: %q", extra)
	}
	for _, secret := range []string{emutest.BlueprintSecret, emutest.DefaultUserPassword, ready["admin_token"].(string)} {
		if strings.Contains(stderr.String(), secret) {
			t.Errorf("stderr leaks a secret")
		}
	}
}

func TestRefusesBadArguments(t *testing.T) {
	bin := emutest.Build(t)
	cases := [][]string{
		{"--listen", "0.0.0.0:0"},
		{"--listen", "localhost:0"},
		{"--directory", filepath.Join(t.TempDir(), "missing.json")},
		{"--no-such-flag"},
		{"extra"},
	}
	for _, args := range cases {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, bin, append(args, "--state-dir", t.TempDir())...).Output()
			if err == nil || len(out) != 0 {
				t.Fatalf("err = %v, stdout = %q", err, out)
			}
		})
	}
}

// TestRestartKeepsSessions signs in, restarts the emulator on the same port and state directory, and refreshes.
func TestRestartKeepsSessions(t *testing.T) {
	emu := emutest.Start(t, emutest.Options{TokenLifetime: 2 * time.Minute})
	pub, err := public.New(emutest.PublicClientID, public.WithAuthority(emu.Authority), public.WithHTTPClient(emu.HTTPClient()), public.WithInstanceDiscovery(false))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dc, err := pub.AcquireTokenByDeviceCode(ctx, []string{emutest.BlueprintUserScope})
	if err != nil {
		t.Fatal(err)
	}
	if err := emu.CompleteDeviceCode(dc.Result.VerificationURL, dc.Result.UserCode, emutest.DefaultUserUPN, emutest.DefaultUserPassword); err != nil {
		t.Fatal(err)
	}
	res, err := dc.AuthenticationResult(ctx)
	if err != nil {
		t.Fatal(err)
	}
	url, admin := emu.URL, emu.AdminToken
	kid := emu.RotateKeys()
	emu.Restart()
	if emu.URL != url || emu.AdminToken != admin {
		t.Fatalf("restart changed url or admin token")
	}
	// The old HTTP client must still work: same CA.
	if _, err := pub.AcquireTokenSilent(ctx, []string{emutest.BlueprintUserScope}, public.WithSilentAccount(res.Account)); err != nil {
		t.Fatalf("silent refresh after restart: %v", err)
	}
	if again := emu.RotateKeys(); again == kid {
		t.Fatal("rotation returned the same key")
	}
	c, err := emu.Counters()
	if err != nil || c.ByGrantType["refresh_token"] != 1 {
		t.Fatalf("counters after restart: %+v %v", c, err)
	}
}

// TestExitsWhenStdinCloses: with ENTRA_EMULATOR_EXIT_ON_STDIN_EOF=1 (what emutest sets) a harness that dies without
// stopping the emulator does not leave it running.
func TestExitsWhenStdinCloses(t *testing.T) {
	cmd := exec.Command(emutest.Build(t), "--state-dir", t.TempDir())
	cmd.Env = append(os.Environ(), exitOnStdinEOF+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := bufio.NewReader(stdout).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("emulator still running 10 s after stdin closed")
	}
}
