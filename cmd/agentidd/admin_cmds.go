package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/daemon"
	"github.com/agentidd/agentidd/internal/store"
	"github.com/agentidd/agentidd/platform"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

func grantsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "grants",
		Short: "List the user's consent grants",
		Args:  cobra.NoArgs,
		RunE: g.withConn(func(cmd *cobra.Command, args []string, c *client.Conn) error {
			resp, err := c.Admin.ListGrants(cmd.Context(), &agentidv1.ListGrantsRequest{})
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if len(resp.GetGrants()) == 0 {
				fmt.Fprintln(w, "no grants")
			}
			for _, gr := range resp.GetGrants() {
				task := ""
				if gr.GetTaskId() != "" {
					task = " task=" + gr.GetTaskId()
				}
				fmt.Fprintf(w, "%s  %s (%s) %s %s until %s via %s%s\n", shown(gr.GetId()), shown(gr.GetAgentName()), shown(gr.GetMode()),
					shown(gr.GetResource()), shown(strings.Join(gr.GetScopes(), ",")), gr.GetNotAfter().AsTime().Local().Format(time.RFC3339),
					shown(gr.GetDecidedVia()), shown(task))
			}
			return nil
		}),
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a grant; its tokens are purged before this returns",
		Args:  cobra.ExactArgs(1),
		RunE: g.withConn(func(cmd *cobra.Command, args []string, c *client.Conn) error {
			resp, err := c.Admin.RevokeGrant(cmd.Context(), &agentidv1.RevokeGrantRequest{Id: args[0]})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked %s; %d token(s) purged\n", resp.GetGrant().GetId(), resp.GetPurgedTokens())
			return nil
		}),
	})
	return cmd
}

// shown makes text an agent may have chosen (its executable's file name, scopes, task ids) safe to print on the user's
// terminal: control characters (an escape sequence could rewrite the lines around it, say to show other scopes than
// those asked for) and bidirectional overrides (which reorder what is shown) are printed as \u escapes.
func shown(s string) string {
	var b strings.Builder
	for _, r := range s {
		if unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) || r == utf8.RuneError {
			fmt.Fprintf(&b, "\\u%04x", r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func printConsentRequest(w io.Writer, r *agentidv1.ConsentRequest) {
	fmt.Fprintf(w, "request %s: agent %s (%s) wants %s access to %s: %s\n", shown(r.GetId()), shown(r.GetAgentName()),
		shown(r.GetAgentAppId()), shown(r.GetMode()), shown(r.GetResource()), shown(strings.Join(r.GetScopes(), " ")))
	fmt.Fprintf(w, "  process %d %s (sha256 %s…)\n", r.GetPid(), shown(r.GetExePath()), shown(r.GetExeSha256Prefix()))
	if r.GetTaskId() != "" {
		fmt.Fprintf(w, "  task %s\n", shown(r.GetTaskId()))
	}
	if len(r.GetChain()) > 0 {
		fmt.Fprintf(w, "  delegated by %s\n", shown(strings.Join(r.GetChain(), " → ")))
	}
	if r.GetJustification() != "" {
		fmt.Fprintf(w, "  the agent says (its own words, unverified): %q\n", r.GetJustification())
	}
}

func consentCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "consent", Short: "See and decide consent requests (works over SSH and headless)"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List pending consent requests",
		Args:  cobra.NoArgs,
		RunE: g.withConn(func(cmd *cobra.Command, args []string, c *client.Conn) error {
			resp, err := c.Admin.ListConsentRequests(cmd.Context(), &agentidv1.ListConsentRequestsRequest{})
			if err != nil {
				return err
			}
			if len(resp.GetRequests()) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "no pending consent requests")
			}
			for _, r := range resp.GetRequests() {
				printConsentRequest(cmd.OutOrStdout(), r)
			}
			return nil
		}),
	})
	var forDur grantDuration
	decide := func(allow bool) func(cmd *cobra.Command, args []string) error {
		return g.withConn(func(cmd *cobra.Command, args []string, c *client.Conn) error {
			req := &agentidv1.DecideConsentRequest{Id: args[0], Allow: allow}
			if forDur > 0 {
				req.Duration = durationpb.New(time.Duration(forDur))
			}
			resp, err := c.Admin.DecideConsent(cmd.Context(), req)
			if err != nil {
				return err
			}
			if allow {
				fmt.Fprintf(cmd.OutOrStdout(), "approved: grant %s until %s\n", resp.GetGrant().GetId(), resp.GetGrant().GetNotAfter().AsTime().Local().Format(time.RFC3339))
			} else {
				fmt.Fprintln(cmd.OutOrStdout(), "denied")
			}
			return nil
		})
	}
	approve := &cobra.Command{Use: "approve ID", Short: "Approve a pending request", Args: cobra.ExactArgs(1), RunE: decide(true)}
	approve.Flags().Var(&forDur, "for", "grant duration: 1h, 8h or 7d (default: the task, else 1h)")
	cmd.AddCommand(approve)
	cmd.AddCommand(&cobra.Command{Use: "deny ID", Short: "Deny a pending request (remembered for the cool-down)", Args: cobra.ExactArgs(1), RunE: decide(false)})
	cmd.AddCommand(&cobra.Command{
		Use:   "reset",
		Short: "Forget remembered denials",
		Args:  cobra.NoArgs,
		RunE: g.withConn(func(cmd *cobra.Command, args []string, c *client.Conn) error {
			if _, err := c.Admin.ResetConsent(cmd.Context(), &agentidv1.ResetConsentRequest{}); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "remembered denials forgotten: agents that were denied may ask again")
			return nil
		}),
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "watch",
		Short: "Show consent requests as they arrive and answer them with a key: a approve (1h), t this task, d deny, s skip",
		Args:  cobra.NoArgs,
		RunE: g.withConn(func(cmd *cobra.Command, args []string, c *client.Conn) error {
			stream, err := c.Admin.WatchConsentRequests(cmd.Context(), &agentidv1.ListConsentRequestsRequest{})
			if err != nil {
				return err
			}
			in := bufio.NewReader(cmd.InOrStdin())
			w := cmd.OutOrStdout()
			fmt.Fprintln(w, "waiting for consent requests (Ctrl-C to stop)")
			for {
				r, err := stream.Recv()
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return err
				}
				printConsentRequest(w, r)
				fmt.Fprint(w, "  [a]pprove 1h, approve for [t]his task, [d]eny, [s]kip? ")
				line, err := in.ReadString('\n')
				if err != nil && line == "" {
					return nil
				}
				req := &agentidv1.DecideConsentRequest{Id: r.GetId()}
				switch strings.TrimSpace(strings.ToLower(line)) {
				case "a":
					req.Allow, req.Duration = true, durationpb.New(time.Hour)
				case "t":
					req.Allow = true
				case "d":
				default:
					fmt.Fprintln(w, "  skipped")
					continue
				}
				resp, err := c.Admin.DecideConsent(cmd.Context(), req)
				if err != nil {
					fmt.Fprintf(w, "  %v\n", err)
					continue
				}
				if req.Allow {
					fmt.Fprintf(w, "  approved: grant %s\n", resp.GetGrant().GetId())
				} else {
					fmt.Fprintln(w, "  denied")
				}
			}
		}),
	})
	return cmd
}

// grantDuration is consent approve's --for: a positive Go duration, or whole days as the daemon names them ("7d"). A
// zero or negative value is refused: left to the default, it would grant what the user did not ask for.
type grantDuration time.Duration

func (d *grantDuration) String() string {
	if *d == 0 {
		return ""
	}
	return time.Duration(*d).String()
}

func (d *grantDuration) Type() string { return "duration" }

func (d *grantDuration) Set(s string) error {
	var v time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n > 366 {
			return fmt.Errorf("%q is not a duration like 1h, 8h or 7d", s)
		}
		v = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if v, err = time.ParseDuration(s); err != nil {
			return fmt.Errorf("%q is not a duration like 1h, 8h or 7d", s)
		}
	}
	if v <= 0 {
		return fmt.Errorf("%q: a grant must last a positive time, like 1h, 8h or 7d", s)
	}
	*d = grantDuration(v)
	return nil
}

func auditCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Read and verify the two-principal audit log"}
	var n int
	tail := &cobra.Command{
		Use:   "tail",
		Short: "Print the latest audit records, one JSON object a line",
		Args:  cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error {
			if n < 1 {
				return fmt.Errorf("-n %d: give how many records to show, at least 1", n)
			}
			return nil
		},
		RunE: g.withConn(func(cmd *cobra.Command, args []string, c *client.Conn) error {
			resp, err := c.Admin.AuditTail(cmd.Context(), &agentidv1.AuditTailRequest{N: int32(min(n, math.MaxInt32))})
			if err != nil {
				return err
			}
			for _, l := range resp.GetLines() {
				fmt.Fprintln(cmd.OutOrStdout(), l)
			}
			return nil
		}),
	}
	tail.Flags().IntVarP(&n, "n", "n", 20, "how many of the latest records to print")
	cmd.AddCommand(tail, &cobra.Command{
		Use:   "verify",
		Short: "Check the audit log's hash chain: fails if a record was edited, removed or reordered",
		Args:  cobra.NoArgs,
		RunE: g.withConn(func(cmd *cobra.Command, args []string, c *client.Conn) error {
			resp, err := c.Admin.AuditVerify(cmd.Context(), &agentidv1.AuditVerifyRequest{})
			if err != nil {
				return err
			}
			if resp.GetError() != "" {
				return fmt.Errorf("audit chain broken after %d records: %s", resp.GetRecords(), resp.GetError())
			}
			fmt.Fprintf(cmd.OutOrStdout(), "audit chain intact: %d records\n", resp.GetRecords())
			return nil
		}),
	})
	return cmd
}

// daemonRunning reports whether a daemon answers on the endpoint, and its pid.
func (g *globals) daemonRunning(ctx context.Context) (int32, bool) {
	c, err := g.dial()
	if err != nil {
		return 0, false
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := c.Admin.Status(ctx, &agentidv1.StatusRequest{})
	if err != nil {
		// Any answer but "nothing there" is a daemon: one that refuses this CLI (an upgraded binary fails the admin
		// gate's hash) or is slow to answer is still running and still has the state.
		return 0, status.Code(err) != codes.Unavailable
	}
	return st.GetPid(), true
}

func resetCmd(g *globals) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "reset",
		Short: "Wipe the encrypted state (sign-in, grants, cached tokens); the daemon must be stopped",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.config()
			if err != nil {
				return err
			}
			path := filepath.Join(cfg.StateDir, "state.db")
			// The state file's lock shows a running daemon only when it opened the file: one serving degraded (it could
			// not read the file) holds no lock, and a reset under it leaves it refusing everything until it restarts.
			if pid, running := g.daemonRunning(cmd.Context()); running {
				who := "a daemon answers"
				if pid > 0 {
					who = fmt.Sprintf("pid %d", pid)
				}
				return fmt.Errorf("agentidd is running (%s on %s): stop it first (`agentidd service stop`, or end `agentidd run`)", who, g.where())
			}
			if !yes {
				fmt.Fprintf(cmd.ErrOrStderr(), "This resets %s: the sign-in, all grants and cached tokens. Type yes to continue: ", path)
				line, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
				if strings.TrimSpace(line) != "yes" {
					return errors.New("not confirmed; nothing deleted")
				}
			}
			secrets, err := platform.OpenSecretStore(cfg.SecretStore, cfg.StateDir)
			if err != nil {
				return err
			}
			movedTo, err := store.Reset(path, secrets, store.Options{})
			if errors.Is(err, store.ErrInUse) {
				return errors.New("the daemon is running: stop it first")
			}
			if err != nil {
				return err
			}
			keptAt, err := daemon.ClearRefusal(cfg.StateDir)
			if err != nil {
				return err
			}
			switch {
			case movedTo != "":
				fmt.Fprintf(cmd.OutOrStdout(), "state reset; the old (now unreadable) file is at %s\n", movedTo)
			case keptAt != "":
				fmt.Fprintf(cmd.OutOrStdout(), "state reset; the unreadable file the daemon set aside is still at %s\n", keptAt)
			default:
				fmt.Fprintln(cmd.OutOrStdout(), "state reset (there was none)")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "do not ask")
	return cmd
}
