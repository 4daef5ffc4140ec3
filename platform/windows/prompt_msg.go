package windows

// This file has no build tag on purpose: message layout and response
// mapping are shared logic unit-tested on Linux CI; only the
// WTSSendMessageW call (prompt.go) is Windows-only.

import (
	"fmt"
	"strings"
	"time"

	"github.com/agentidd/agentidd/platform"
)

// Message box styles and responses (winuser.h). Deny ("No") is the default
// button so a stray Enter does not approve.
const (
	mbYesNo         = 0x00000004
	mbIconWarning   = 0x00000030
	mbDefButton2    = 0x00000100
	mbSetForeground = 0x00010000
	mbTopmost       = 0x00040000

	mbOK = 0x00000000

	promptStyle = mbYesNo | mbIconWarning | mbDefButton2 | mbSetForeground | mbTopmost
	alertStyle  = mbOK | mbIconWarning | mbSetForeground

	idYes     = 6
	idNo      = 7
	idTimeout = 32000
	idAsync   = 32001
)

// messageText lays out the box. Message boxes have no custom button
// labels, so the text says which button is which.
func messageText(p platform.Prompt) (title, body string) {
	body = p.Text.Body + "\n\nYes = Allow, No = Deny.\nRequest " + p.RequestID +
		". You can also answer in a terminal: agentidd consent approve " + p.RequestID
	return p.Text.Title, strings.ReplaceAll(body, "\n", "\r\n")
}

func timeoutSeconds(d time.Duration) uint32 {
	if d <= 0 {
		d = 2 * time.Minute
	}
	return uint32(max(1, int64((d+time.Second-1)/time.Second)))
}

// responseDecision maps WTSSendMessage's response.
func responseDecision(resp uint32) (platform.PromptDecision, error) {
	switch resp {
	case idYes:
		return platform.PromptAllow, nil
	case idNo:
		return platform.PromptDeny, nil
	case idTimeout:
		return platform.PromptTimeout, nil
	}
	return 0, fmt.Errorf("%w: unexpected message box response %d", platform.ErrPromptUnavailable, resp)
}
