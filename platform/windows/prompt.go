//go:build windows

package windows

import (
	"context"
	"fmt"
	"unsafe"

	"golang.org/x/sys/windows"

	"github.com/agentidd/agentidd/platform"
)

func init() {
	platform.RegisterPrompterChooser(choosePrompter)
}

// x/sys/windows has no WTSSendMessageW, so it is loaded lazily from the
// system directory (never from the DLL search path).
var (
	wtsapi32            = windows.NewLazySystemDLL("wtsapi32.dll")
	procWTSSendMessageW = wtsapi32.NewProc("WTSSendMessageW")
)

// choosePrompter returns nil in session 0 (services): nobody can see a
// message box there.
func choosePrompter() platform.Prompter {
	var session uint32
	if err := windows.ProcessIdToSessionId(windows.GetCurrentProcessId(), &session); err != nil || session == 0 {
		return nil
	}
	if procWTSSendMessageW.Find() != nil {
		return nil
	}
	return &MessagePrompter{session: session}
}

// MessagePrompter shows a Yes/No message box in the daemon's own session
// (the user's, also under RDP) with WTSSendMessageW. This file is
// compile-checked only on Linux CI; the text layout and response mapping
// are tested in prompt_msg_test.go.
type MessagePrompter struct {
	session uint32
}

var _ platform.Prompter = (*MessagePrompter)(nil)

// Name implements platform.Prompter.
func (p *MessagePrompter) Name() string { return "wts-message" }

var _ platform.Alerter = (*MessagePrompter)(nil)

// Alert implements platform.Alerter: an OK message box that the call does not wait for (bWait false), gone after
// an hour if nobody closes it.
func (p *MessagePrompter) Alert(_ context.Context, title, body string) error {
	t16, err := windows.UTF16FromString(title)
	if err != nil {
		return err
	}
	b16, err := windows.UTF16FromString(body)
	if err != nil {
		return err
	}
	var resp uint32
	r, _, callErr := procWTSSendMessageW.Call(0, uintptr(p.session),
		uintptr(unsafe.Pointer(&t16[0])), uintptr((len(t16)-1)*2),
		uintptr(unsafe.Pointer(&b16[0])), uintptr((len(b16)-1)*2),
		alertStyle, 3600, uintptr(unsafe.Pointer(&resp)), 0)
	if r == 0 {
		return fmt.Errorf("WTSSendMessageW: %w", callErr)
	}
	return nil
}

// Prompt implements platform.Prompter. WTSSendMessageW cannot be
// cancelled: when ctx ends first (answered from the terminal), Prompt
// returns at once and the box stays until its own timeout, and its answer
// is then ignored.
func (p *MessagePrompter) Prompt(ctx context.Context, pr platform.Prompt) (platform.PromptDecision, error) {
	title, body := messageText(pr)
	t16, err := windows.UTF16FromString(title)
	if err != nil {
		return 0, fmt.Errorf("%w: title: %w", platform.ErrPromptUnavailable, err)
	}
	b16, err := windows.UTF16FromString(body)
	if err != nil {
		return 0, fmt.Errorf("%w: body: %w", platform.ErrPromptUnavailable, err)
	}
	secs := timeoutSeconds(pr.Timeout)
	type result struct {
		resp uint32
		err  error
	}
	done := make(chan result, 1)
	go func() {
		var resp uint32
		// Lengths are in bytes, without the terminating NUL.
		r, _, callErr := procWTSSendMessageW.Call(
			0, // WTS_CURRENT_SERVER_HANDLE
			uintptr(p.session),
			uintptr(unsafe.Pointer(&t16[0])), uintptr((len(t16)-1)*2),
			uintptr(unsafe.Pointer(&b16[0])), uintptr((len(b16)-1)*2),
			promptStyle,
			uintptr(secs),
			uintptr(unsafe.Pointer(&resp)),
			1, // bWait
		)
		if r == 0 {
			done <- result{err: fmt.Errorf("%w: WTSSendMessageW: %w", platform.ErrPromptUnavailable, callErr)}
			return
		}
		done <- result{resp: resp}
	}()
	select {
	case <-ctx.Done():
		return platform.PromptDismissed, ctx.Err()
	case r := <-done:
		if r.err != nil {
			return 0, r.err
		}
		return responseDecision(r.resp)
	}
}
