package entraemu

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// RunConfig is what the entra-emulator program is started with.
type RunConfig struct {
	DirectoryFile string        // empty: the embedded default directory
	Listen        string        // host:port; the host must be 127.0.0.1
	StateDir      string        // empty: a new temporary directory
	TokenLifetime time.Duration // zero: DefaultTokenLifetime
	Stdout        io.Writer     // receives the one JSON line
	Logger        *slog.Logger
}

// Ready is the JSON line printed once the emulator listens.
type Ready struct {
	URL        string `json:"url"`
	Tenant     string `json:"tenant"`
	Authority  string `json:"authority"`
	CAFile     string `json:"ca_file"`
	AdminURL   string `json:"admin_url"`
	AdminToken string `json:"admin_token"`
	PID        int    `json:"pid"`
}

// saved is <state-dir>/state.json: what a restart with the same state dir picks up again.
type saved struct {
	CA         *CA    `json:"ca"`
	AdminToken string `json:"admin_token"`
	State      *State `json:"state"`
}

const stateFile = "state.json"

// Run serves until ctx is done, then saves state into the state dir and returns nil.
func Run(ctx context.Context, cfg RunConfig) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	host, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", cfg.Listen, err)
	}
	if host != "127.0.0.1" {
		return fmt.Errorf("--listen %q: the emulator only listens on 127.0.0.1", cfg.Listen)
	}
	var dir *Directory
	if cfg.DirectoryFile != "" {
		if dir, err = LoadDirectory(cfg.DirectoryFile); err != nil {
			return err
		}
	}
	stateDir := cfg.StateDir
	if stateDir == "" {
		if stateDir, err = os.MkdirTemp("", "entra-emulator-"); err != nil {
			return fmt.Errorf("creating state dir: %w", err)
		}
	} else if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("creating state dir: %w", err)
	}
	sv, err := loadSaved(filepath.Join(stateDir, stateFile))
	if err != nil {
		return err
	}
	if sv.CA == nil {
		if sv.CA, err = NewCA(); err != nil {
			return err
		}
	}
	if sv.AdminToken == "" {
		sv.AdminToken = randString(32)
	}
	if dir != nil && sv.State != nil {
		// An explicit directory file wins over the directory a previous run saved.
		sv.State.Directory = dir
	}
	caFile := filepath.Join(stateDir, "ca.pem")
	if err := writeFileAtomic(caFile, sv.CA.CertPEM, 0o644); err != nil {
		return err
	}
	cert, err := sv.CA.ServerCertificate()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	base := "https://" + ln.Addr().String()
	emu, err := New(Config{BaseURL: base, Directory: dir, TokenLifetime: cfg.TokenLifetime, AdminToken: sv.AdminToken, Logger: log, State: sv.State})
	if err != nil {
		ln.Close()
		return err
	}
	srv := &http.Server{
		Handler:           emu,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		// HTTP/1.1 only: the "reset" fault needs to hijack connections, which HTTP/2 does not allow.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()

	ready := Ready{URL: base, Tenant: emu.TenantID(), Authority: base + "/" + emu.TenantID(), CAFile: caFile,
		AdminURL: base + "/_admin", AdminToken: sv.AdminToken, PID: os.Getpid()}
	line, _ := json.Marshal(ready)
	if cfg.Stdout != nil {
		if _, err := fmt.Fprintf(cfg.Stdout, "%s\n", line); err != nil {
			return fmt.Errorf("writing ready line: %w", err)
		}
	}
	log.Info("entra emulator listening", "url", base, "tenant", emu.TenantID(), "state_dir", stateDir)

	select {
	case <-ctx.Done():
	case err := <-errc:
		return fmt.Errorf("serving: %w", err)
	}
	emu.Close()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	sv.State = emu.Snapshot()
	b, err := json.Marshal(sv)
	if err != nil {
		return fmt.Errorf("encoding state: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(stateDir, stateFile), b, 0o600); err != nil {
		return err
	}
	log.Info("entra emulator stopped")
	return nil
}

func loadSaved(path string) (*saved, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &saved{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading state: %w", err)
	}
	var sv saved
	if err := json.Unmarshal(b, &sv); err != nil {
		return nil, fmt.Errorf("state file %s: %w", path, err)
	}
	return &sv, nil
}

// writeFileAtomic writes via a temp file, fsync and rename, so a crash leaves the old file or the new one.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
