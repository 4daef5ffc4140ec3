package main

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/agentidd/agentidd/internal/config"
	"github.com/agentidd/agentidd/internal/daemon"
	"github.com/agentidd/agentidd/platform"
)

// readSecret reads a secret from a terminal without echo, or from stdin when it is not a terminal. Never from argv:
// argv is visible to every process of every user through /proc.
func readSecret(cmd *cobra.Command) ([]byte, error) {
	if f, ok := cmd.InOrStdin().(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(cmd.ErrOrStderr(), "secret (not echoed): ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(cmd.ErrOrStderr())
		if err != nil {
			return nil, err
		}
		return b, nil
	}
	b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 64<<10))
	if err != nil {
		return nil, err
	}
	return []byte(strings.TrimRight(string(b), "\r\n")), nil
}

// maxCertFile bounds a certificate credential: a chain and a 4096-bit key are a few KiB.
const maxCertFile = 64 << 10

// readCertCredential reads a PEM file holding a certificate and its RSA private key (PKCS#1 or PKCS#8) and returns
// just those two blocks, re-encoded, so nothing else from the file (comments, other keys) reaches the secret store.
// Errors never quote the file's content.
func readCertCredential(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCertFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxCertFile {
		return nil, fmt.Errorf("%s is larger than %d bytes: not a certificate credential", path, maxCertFile)
	}
	var certs []*pem.Block
	var key *pem.Block
	var pub *rsa.PublicKey
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch b.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: a CERTIFICATE block does not parse: %w", path, err)
			}
			if len(certs) == 0 {
				p, ok := c.PublicKey.(*rsa.PublicKey)
				if !ok {
					return nil, fmt.Errorf("%s: the first certificate's key is not RSA (Entra client assertions here are RS256)", path)
				}
				pub = p
			}
			certs = append(certs, &pem.Block{Type: b.Type, Bytes: b.Bytes})
		case "RSA PRIVATE KEY", "PRIVATE KEY":
			if key != nil {
				return nil, fmt.Errorf("%s holds more than one private key", path)
			}
			if strings.Contains(b.Headers["Proc-Type"], "ENCRYPTED") { // legacy RFC 1423 encryption
				return nil, fmt.Errorf("%s: the private key is encrypted; store an unencrypted key (the secret store protects it)", path)
			}
			key = b
		case "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("%s: the private key is encrypted; store an unencrypted key (the secret store protects it)", path)
		}
	}
	if len(certs) == 0 || key == nil {
		return nil, fmt.Errorf("%s must hold a PEM CERTIFICATE and its RSA PRIVATE KEY", path)
	}
	var priv *rsa.PrivateKey
	if key.Type == "RSA PRIVATE KEY" {
		priv, err = x509.ParsePKCS1PrivateKey(key.Bytes)
	} else {
		var k any
		k, err = x509.ParsePKCS8PrivateKey(key.Bytes)
		if err == nil {
			var ok bool
			if priv, ok = k.(*rsa.PrivateKey); !ok {
				err = errors.New("not an RSA key")
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%s: the private key does not parse: %w", path, err)
	}
	if !priv.PublicKey.Equal(pub) {
		return nil, fmt.Errorf("%s: the private key does not belong to the (first) certificate", path)
	}
	var out bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&out, c)
	}
	_ = pem.Encode(&out, &pem.Block{Type: key.Type, Bytes: key.Bytes})
	return out.Bytes(), nil
}

// rotate stores secret under name, keeping a different current value under name.previous until the daemon has used the
// new one successfully (it deletes .previous then). The old value is written first: a crash in between leaves the old
// secret in force, never neither. A .previous still there means the current value was never confirmed good, so it is
// kept as it is: .previous always holds the last credential known to work.
func rotate(s platform.SecretStore, name string, secret []byte) (kept bool, err error) {
	old, err := s.Get(name)
	switch {
	case errors.Is(err, platform.ErrSecretNotFound):
		old = nil
	case err != nil:
		return false, err
	}
	_, prevErr := s.Get(name + daemon.PreviousSecretSuffix)
	switch {
	case prevErr == nil:
		old = nil // an unconfirmed value is not worth keeping over the last known-good one
		kept = true
	case !errors.Is(prevErr, platform.ErrSecretNotFound):
		return false, prevErr
	}
	if old != nil && !bytes.Equal(old, secret) {
		if err := s.Set(name+daemon.PreviousSecretSuffix, old); err != nil {
			return false, fmt.Errorf("keeping the previous secret: %w", err)
		}
		kept = true
	}
	if err := s.Set(name, secret); err != nil {
		return kept, err
	}
	return kept, nil
}

func secretCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "secret", Short: "Store agent credentials in the OS secret store"}
	// Only the blueprint has a credential: agent identities act through it (ENTRA-NOTES), so there is no per-agent secret.
	var blueprint, certFile string
	var cfg *config.Config
	// item names the blueprint's credential: --blueprint, or the config's blueprint_app_id when it is not given. set
	// passes strict: a credential stored under another id would never be read by the daemon; rm may remove any.
	item := func(strict bool) (string, error) {
		if blueprint == "" {
			return platform.BlueprintItem(cfg.BlueprintAppID), nil
		}
		if strings.EqualFold(blueprint, cfg.BlueprintAppID) {
			return platform.BlueprintItem(cfg.BlueprintAppID), nil
		}
		if strict {
			path, _ := g.configFile()
			return "", fmt.Errorf("--blueprint %s is not the configured blueprint_app_id %s (%s): the daemon would never read it; "+
				"leave out --blueprint, or change blueprint_app_id first", blueprint, cfg.BlueprintAppID, path)
		}
		return platform.BlueprintItem(blueprint), nil
	}
	open := func() (platform.SecretStore, error) {
		var err error
		if cfg, err = g.config(); err != nil {
			return nil, err
		}
		s, err := platform.OpenSecretStore(cfg.SecretStore, cfg.StateDir)
		if err != nil {
			return nil, err
		}
		return s, platform.ProbeSecretStore(s)
	}
	set := &cobra.Command{
		Use:   "set",
		Short: "Store a client secret read from stdin or a no-echo prompt, or a certificate with --cert FILE.pem",
		Long: "Store a credential. A client secret is read from stdin or a no-echo prompt, never from the command line.\n" +
			"With --cert, a PEM file holding the certificate and its unencrypted RSA private key is imported into the store\n" +
			"(the file itself is left alone: delete it when you no longer need it).\n" +
			"Replacing a credential keeps the old one as <item>.previous until the daemon has used the new one successfully.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := open()
			if err != nil {
				return err
			}
			name, err := item(true)
			if err != nil {
				return err
			}
			var secret []byte
			if certFile != "" {
				secret, err = readCertCredential(certFile)
			} else {
				secret, err = readSecret(cmd)
			}
			if err != nil {
				return err
			}
			if len(secret) == 0 {
				return errors.New("empty secret: nothing stored")
			}
			kept, err := rotate(s, name, secret)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "stored %s in %s\n", name, s.Describe())
			if kept {
				fmt.Fprintf(cmd.OutOrStdout(), "the old credential is kept as %s%s until the daemon has used the new one\n", name, daemon.PreviousSecretSuffix)
			}
			return nil
		},
	}
	set.Flags().StringVar(&certFile, "cert", "", "PEM file with the certificate and its RSA private key")
	rm := &cobra.Command{
		Use:   "rm",
		Short: "Remove a credential (and a kept previous one)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := open()
			if err != nil {
				return err
			}
			name, err := item(false)
			if err != nil {
				return err
			}
			found := false
			for _, n := range []string{name, name + daemon.PreviousSecretSuffix} {
				if _, err := s.Get(n); err == nil {
					found = true
				} else if !errors.Is(err, platform.ErrSecretNotFound) {
					return err
				}
				if err := s.Delete(n); err != nil {
					return err
				}
			}
			if !found {
				fmt.Fprintf(cmd.OutOrStdout(), "nothing stored under %s\n", name)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", name)
			return nil
		},
	}
	for _, c := range []*cobra.Command{set, rm} {
		c.Flags().StringVar(&blueprint, "blueprint", "", "blueprint app id (default: the config's blueprint_app_id)")
	}
	cmd.AddCommand(set, rm)
	return cmd
}
