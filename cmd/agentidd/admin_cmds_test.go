package main

import (
	"bytes"
	"strings"
	"testing"

	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

// An agent names its own executable and scopes; printed raw, an escape sequence in them could rewrite the request on
// the user's terminal (move up, erase the line, print another).
func TestConsentRequestPrintsNoControlCharacters(t *testing.T) {
	r := &agentidv1.ConsentRequest{Id: "cr_1", AgentName: "coder", AgentAppId: "app", Mode: "obo", Resource: "api://files",
		Scopes:  []string{"Files.ReadWrite.All", "x\u202ey"},
		ExePath: "/tmp/a\x1b[1A\x1b[2K\rrequest cr_1: agent coder wants Files.Read\n", Pid: 42, TaskId: "t\x07", Chain: []string{"p\x9b2J"}}
	var out bytes.Buffer
	printConsentRequest(&out, r)
	s := out.String()
	for _, bad := range []string{"\x1b", "\r", "\x07", "\x9b", "\u202e"} {
		if strings.Contains(s, bad) {
			t.Errorf("output carries %q:\n%s", bad, s)
		}
	}
	if n := strings.Count(s, "\n"); n != 4 { // request, process, task, delegated by
		t.Errorf("%d lines, want 4: an agent's text started a line of its own:\n%s", n, s)
	}
	if !strings.Contains(s, `/tmp/a\u001b[1A`) || !strings.Contains(s, "Files.ReadWrite.All") {
		t.Errorf("the path or scopes are not shown escaped:\n%s", s)
	}
}
