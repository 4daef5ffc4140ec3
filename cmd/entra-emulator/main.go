// Command entra-emulator runs a local stand-in for Microsoft Entra ID's v2 endpoints over HTTPS on 127.0.0.1, for the
// agentidd demo and integration tests. After it listens it prints one JSON line on stdout (url, tenant, authority,
// ca_file, admin_url, admin_token, pid); logs go to stderr. See docs/emulator.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/agentidd/agentidd/internal/entraemu"
)

// exitOnStdinEOF names the environment variable that makes the emulator stop when its stdin reaches EOF.
const exitOnStdinEOF = "ENTRA_EMULATOR_EXIT_ON_STDIN_EOF"

func main() {
	fs := flag.NewFlagSet("entra-emulator", flag.ContinueOnError)
	directory := fs.String("directory", "", "directory file (JSON); default: the embedded demo directory")
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on; the host must be 127.0.0.1")
	stateDir := fs.String("state-dir", "", "directory for ca.pem and state.json; default: a new temporary directory")
	lifetime := fs.Duration("token-lifetime", entraemu.DefaultTokenLifetime, "access token lifetime")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "entra-emulator: unexpected arguments %q\n", fs.Args())
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if os.Getenv(exitOnStdinEOF) == "1" {
		// Test harnesses hold our stdin open; when the harness dies without stopping us, the OS closes it and we exit
		// instead of lingering. Off by default: a daemonised emulator often has /dev/null as stdin.
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			log.Info("stdin closed; shutting down")
			stop()
		}()
	}
	err := entraemu.Run(ctx, entraemu.RunConfig{
		DirectoryFile: *directory, Listen: *listen, StateDir: *stateDir, TokenLifetime: *lifetime,
		Stdout: os.Stdout, Logger: log,
	})
	if err != nil {
		log.Error("entra-emulator failed", "err", err)
		os.Exit(1)
	}
}
