//go:build darwin

package darwin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/agentidd/agentidd/platform"
)

func init() {
	platform.RegisterPrompterChooser(choosePrompter)
}

// choosePrompter returns the osascript prompter when osascript exists. It
// cannot tell in advance whether a GUI session is reachable (a launchd
// agent in the Aqua session can, an SSH login usually cannot); a failed
// dialog falls back to a notification and the terminal path.
func choosePrompter() platform.Prompter {
	path, err := exec.LookPath("osascript")
	if err != nil {
		return nil
	}
	return &DialogPrompter{osascript: path}
}

// DialogPrompter asks with an AppleScript display dialog. This file is
// compile-checked only on Linux CI; the script text and result parsing it
// relies on are tested in prompt_script_test.go.
type DialogPrompter struct {
	osascript string
}

var _ platform.Prompter = (*DialogPrompter)(nil)

// Name implements platform.Prompter.
func (p *DialogPrompter) Name() string { return "osascript" }

var _ platform.Alerter = (*DialogPrompter)(nil)

// Alert implements platform.Alerter with a notification.
func (p *DialogPrompter) Alert(ctx context.Context, title, body string) error {
	return exec.CommandContext(ctx, p.osascript, "-e", alertScript(title, body)).Run()
}

// Prompt implements platform.Prompter.
func (p *DialogPrompter) Prompt(ctx context.Context, pr platform.Prompt) (platform.PromptDecision, error) {
	secs := timeoutSeconds(pr.Timeout)
	tctx, cancel := context.WithTimeout(ctx, time.Duration(secs+5)*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(tctx, p.osascript, "-e", dialogScript(pr))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		return platform.PromptDismissed, ctx.Err()
	}
	if tctx.Err() != nil {
		return platform.PromptTimeout, nil
	}
	if err == nil {
		if d, ok := parseDialogResult(stdout.String()); ok {
			return d, nil
		}
	}
	// No dialog (no GUI session, not allowed): say where to answer instead.
	nerr := exec.CommandContext(ctx, p.osascript, "-e", notificationScript(pr)).Run()
	reason := strings.TrimSpace(stderr.String())
	if len(reason) > 200 {
		reason = reason[:200]
	}
	return 0, errors.Join(fmt.Errorf("%w: osascript dialog failed (%v): %s", platform.ErrPromptUnavailable, err, reason), nerr)
}
