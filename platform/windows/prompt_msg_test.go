package windows

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/agentidd/agentidd/platform"
)

func TestResponseDecision(t *testing.T) {
	tests := []struct {
		resp    uint32
		want    platform.PromptDecision
		wantErr bool
	}{
		{idYes, platform.PromptAllow, false},
		{idNo, platform.PromptDeny, false},
		{idTimeout, platform.PromptTimeout, false},
		{idAsync, 0, true},
		{0, 0, true},
		{1, 0, true}, // IDOK is not a Yes
	}
	for _, tc := range tests {
		d, err := responseDecision(tc.resp)
		if d != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("responseDecision(%d) = %v, %v", tc.resp, d, err)
		}
		if err != nil && !errors.Is(err, platform.ErrPromptUnavailable) {
			t.Errorf("error %v does not wrap ErrPromptUnavailable", err)
		}
	}
}

func TestMessageText(t *testing.T) {
	title, body := messageText(platform.Prompt{
		RequestID: "cr_9",
		Text:      platform.PromptText{Title: "Allow Bot?", Body: "line1\nline2"},
	})
	if title != "Allow Bot?" {
		t.Errorf("title = %q", title)
	}
	if !strings.HasPrefix(body, "line1\r\nline2\r\n") || !strings.Contains(body, "Yes = Allow, No = Deny.") ||
		!strings.Contains(body, "agentidd consent approve cr_9") {
		t.Errorf("body = %q", body)
	}
	if strings.Contains(strings.ReplaceAll(body, "\r\n", ""), "\n") {
		t.Errorf("bare LF in body %q", body)
	}
}

func TestPromptStyleDefaultsToNo(t *testing.T) {
	if promptStyle&0xF != mbYesNo || promptStyle&0xF00 != mbDefButton2 {
		t.Fatalf("style %#x: want Yes/No with No as default", promptStyle)
	}
	for d, want := range map[time.Duration]uint32{0: 120, 500 * time.Millisecond: 1, 3 * time.Second: 3} {
		if got := timeoutSeconds(d); got != want {
			t.Errorf("timeoutSeconds(%v) = %d, want %d", d, got, want)
		}
	}
}
