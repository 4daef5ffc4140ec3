package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
)

func TestServiceSubcommands(t *testing.T) {
	var names []string
	for _, c := range serviceCmd(&globals{}).Commands() {
		names = append(names, c.Name())
	}
	sort.Strings(names)
	if got, want := strings.Join(names, " "), "install start status stop uninstall"; got != want {
		t.Fatalf("service subcommands = %q, want %q", got, want)
	}
}

// TestServiceInstallRefuses covers the refusals that happen before any service manager is touched.
func TestServiceInstallRefuses(t *testing.T) {
	dir := t.TempDir()
	valid := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(valid, []byte(`authority = "https://login.microsoftonline.com/11111111-1111-1111-1111-111111111111"
client_id = "22222222-2222-2222-2222-222222222222"
blueprint_app_id = "33333333-3333-3333-3333-333333333333"
state_dir = "state"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	invalid := filepath.Join(dir, "invalid.toml")
	if err := os.WriteFile(invalid, []byte("authority = \"http://insecure\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		config  string
		euid    int
		wantErr string
	}{
		{name: "missing config", config: filepath.Join(dir, "missing.toml"), euid: 1000, wantErr: "refusing to install"},
		{name: "invalid config", config: invalid, euid: 1000, wantErr: "authority"},
		{name: "root", config: valid, euid: 0, wantErr: "as root"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.euid == 0 && runtime.GOOS == "windows" {
				t.Skip("no root refusal on Windows")
			}
			orig := geteuid
			geteuid = func() int { return tt.euid }
			t.Cleanup(func() { geteuid = orig })

			cmd := serviceCmd(&globals{configPath: tt.config})
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			cmd.SetArgs([]string{"install"})
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("install err = %v, want it to mention %q", err, tt.wantErr)
			}
			if _, err := os.Stat(filepath.Join(dir, "state")); !os.IsNotExist(err) {
				t.Errorf("a refused install created the state dir (stat err %v)", err)
			}
		})
	}
}

func TestServiceReadPassword(t *testing.T) {
	tests := []struct {
		name, in, want string
		wantErr        bool
	}{
		{name: "line", in: "s3cret\n", want: "s3cret"},
		{name: "crlf", in: "s3cret\r\n", want: "s3cret"},
		{name: "no newline", in: "s3cret", want: "s3cret"},
		{name: "empty", in: "\n", wantErr: true},
		{name: "nothing", in: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var prompt bytes.Buffer
			got, err := readPassword(strings.NewReader(tt.in), &prompt, `CORP\u`)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("readPassword = %q, %v; want %q (err %v)", got, err, tt.want, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "s3cret") {
				t.Error("error carries the password")
			}
		})
	}
}
