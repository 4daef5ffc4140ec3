package packaging_test

import (
	"bufio"
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/agentidd/agentidd/packaging"
	"github.com/agentidd/agentidd/packaging/servicecfg"
)

// unitSection parses one [section] of a unit file into key → values (a key may repeat).
func unitSection(t *testing.T, unit, section string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	in := false
	sc := bufio.NewScanner(strings.NewReader(unit))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			in = line == "["+section+"]"
		case in:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("malformed unit line %q", line)
			}
			out[k] = append(out[k], v)
		}
	}
	return out
}

func TestSystemdUnitDirectives(t *testing.T) {
	svc := unitSection(t, packaging.SystemdUnit(), "Service")
	tests := []struct{ key, want string }{
		{"Type", "simple"},
		{"ExecStart", "/usr/bin/agentidd run"},
		{"Restart", "on-failure"},
		{"UMask", "0077"},
		{"NoNewPrivileges", "yes"},
		{"PrivateTmp", "yes"},
		{"ProtectSystem", "strict"},
		{"RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"},
		{"LockPersonality", "yes"},
		{"MemoryDenyWriteExecute", "yes"},
		{"SystemCallArchitectures", "native"},
		// Under ProtectSystem=strict these are what keep state, config and the socket writable. The state directory is
		// named outright: before systemd 254, StateDirectory= in a user unit is under ~/.config, not ~/.local/state.
		{"ExecStartPre", "+/usr/bin/mkdir -p -m 0700 %h/.local/state/agentidd"},
		{"ReadWritePaths", "%h/.local/state/agentidd"},
		{"ConfigurationDirectory", "agentidd"},
		{"RuntimeDirectory", "agentidd"},
		{"RuntimeDirectoryMode", "0700"},
	}
	for _, tt := range tests {
		if got := svc[tt.key]; !reflect.DeepEqual(got, []string{tt.want}) {
			t.Errorf("[Service] %s = %q, want %q", tt.key, got, tt.want)
		}
	}
	if got := unitSection(t, packaging.SystemdUnit(), "Install")["WantedBy"]; !reflect.DeepEqual(got, []string{"default.target"}) {
		t.Errorf("[Install] WantedBy = %q; a user unit must hang off default.target", got)
	}
}

// TestSystemdUnitVerifies runs systemd-analyze verify in system and user mode. verify exits 0 on unknown keys and
// unparsable values (it only warns), so any output is a failure too.
func TestSystemdUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	dir := t.TempDir()
	// verify insists the ExecStart binary exists; point it at a stand-in.
	exe := filepath.Join(dir, "agentidd")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	unit := strings.Replace(packaging.SystemdUnit(), "ExecStart=/usr/bin/agentidd run", "ExecStart="+exe+" run", 1)
	path := filepath.Join(dir, "agentidd.service")
	if err := os.WriteFile(path, []byte(unit), 0o600); err != nil {
		t.Fatal(err)
	}
	runtimeDir := filepath.Join(dir, "run")
	if err := os.Mkdir(runtimeDir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("XDG_RUNTIME_DIR", runtimeDir)
	for _, args := range [][]string{{"verify", path}, {"--user", "verify", path}} {
		out, err := exec.Command(analyze, args...).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// parsePlist decodes an XML property list into Go values (map[string]any, []any, string, int64, bool) with
// encoding/xml, rejecting anything that is not well-formed or not a plist.
func parsePlist(data []byte) (any, error) {
	d := xml.NewDecoder(bytes.NewReader(data))
	d.Strict = true
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, fmt.Errorf("no <plist> element: %w", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if se.Name.Local != "plist" {
				return nil, fmt.Errorf("root element is <%s>, not <plist>", se.Name.Local)
			}
			v, err := plistValue(d, nil)
			if err != nil {
				return nil, err
			}
			// The rest must be well-formed too: the closing </plist> and nothing else.
			for {
				tok, err := d.Token()
				if errors.Is(err, io.EOF) {
					return v, nil
				}
				if err != nil {
					return nil, err
				}
				if _, ok := tok.(xml.StartElement); ok {
					return nil, errors.New("more than one value in <plist>")
				}
			}
		}
	}
}

// plistValue reads the next value element; start is that element if the caller already consumed it.
func plistValue(d *xml.Decoder, start *xml.StartElement) (any, error) {
	for start == nil {
		tok, err := d.Token()
		if err != nil {
			return nil, err
		}
		if se, ok := tok.(xml.StartElement); ok {
			start = &se
		}
	}
	switch start.Name.Local {
	case "true", "false":
		if err := d.Skip(); err != nil {
			return nil, err
		}
		return start.Name.Local == "true", nil
	case "string", "key":
		var s string
		err := d.DecodeElement(&s, start)
		return s, err
	case "integer":
		var s string
		if err := d.DecodeElement(&s, start); err != nil {
			return nil, err
		}
		return strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	case "array":
		var out []any
		for {
			tok, err := d.Token()
			if err != nil {
				return nil, err
			}
			switch tok := tok.(type) {
			case xml.StartElement:
				v, err := plistValue(d, &tok)
				if err != nil {
					return nil, err
				}
				out = append(out, v)
			case xml.EndElement:
				return out, nil
			}
		}
	case "dict":
		out := map[string]any{}
		for {
			tok, err := d.Token()
			if err != nil {
				return nil, err
			}
			switch tok := tok.(type) {
			case xml.StartElement:
				if tok.Name.Local != "key" {
					return nil, fmt.Errorf("<dict> holds <%s> where a <key> belongs", tok.Name.Local)
				}
				var k string
				if err := d.DecodeElement(&k, &tok); err != nil {
					return nil, err
				}
				if _, dup := out[k]; dup {
					return nil, fmt.Errorf("duplicate key %q", k)
				}
				v, err := plistValue(d, nil)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", k, err)
				}
				out[k] = v
			case xml.EndElement:
				return out, nil
			}
		}
	}
	return nil, fmt.Errorf("unsupported plist element <%s>", start.Name.Local)
}

// agentSettings are the LaunchAgent keys both the packaged plist and the kardianos one must carry.
var agentSettings = map[string]any{
	"RunAtLoad":        true,
	"KeepAlive":        map[string]any{"SuccessfulExit": false},
	"ProcessType":      "Background",
	"ThrottleInterval": int64(10),
	"Umask":            int64(0o077),
}

func TestLaunchdPlist(t *testing.T) {
	v, err := parsePlist([]byte(packaging.LaunchdPlist()))
	if err != nil {
		t.Fatalf("dev.agentidd.plist is not a well-formed plist: %v", err)
	}
	got, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("top-level value is %T, want a dict", v)
	}
	want := map[string]any{
		"Label":             "dev.agentidd",
		"ProgramArguments":  []any{"__AGENTIDD__", "run"},
		"StandardOutPath":   "__HOME__/Library/Logs/agentidd/agentidd.out.log",
		"StandardErrorPath": "__HOME__/Library/Logs/agentidd/agentidd.err.log",
	}
	for k, v := range agentSettings {
		want[k] = v
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("plist = %#v\nwant     %#v", got, want)
	}
}

// TestLaunchdTemplate fills in the actions the derived kardianos template uses (kardianos' engine is not exported
// and its darwin backend does not build here) and checks the result is the same agent under kardianos' names.
func TestLaunchdTemplate(t *testing.T) {
	tmpl, err := servicecfg.LaunchdTemplate()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"run", "--config", "/Users/u/Library/Application Support/agentidd/config.toml"}
	var rangeBody strings.Builder
	for _, a := range args {
		rangeBody.WriteString("\t\t<string>" + a + "</string>\n")
	}
	rendered := strings.NewReplacer(
		"{{Name | html}}", "agentidd",
		"{{Path | html}}", "/opt/homebrew/bin/agentidd",
		"{{range Arguments}}\t\t<string>{{. | html}}</string>\n{{end}}", rangeBody.String(),
		"{{StandardOutPath | html}}", "/Users/u/Library/Logs/agentidd/agentidd.out.log",
		"{{StandardErrorPath | html}}", "/Users/u/Library/Logs/agentidd/agentidd.err.log",
	).Replace(tmpl)
	if strings.Contains(rendered, "{{") || strings.Contains(rendered, "__HOME__") || strings.Contains(rendered, "__AGENTIDD__") {
		t.Fatalf("template has actions or placeholders this test does not know:\n%s", rendered)
	}
	v, err := parsePlist([]byte(rendered))
	if err != nil {
		t.Fatalf("rendered plist is not well-formed: %v\n%s", err, rendered)
	}
	want := map[string]any{
		"Label":             "agentidd",
		"ProgramArguments":  []any{"/opt/homebrew/bin/agentidd", args[0], args[1], args[2]},
		"StandardOutPath":   "/Users/u/Library/Logs/agentidd/agentidd.out.log",
		"StandardErrorPath": "/Users/u/Library/Logs/agentidd/agentidd.err.log",
	}
	for k, v := range agentSettings {
		want[k] = v
	}
	if !reflect.DeepEqual(v, want) {
		t.Errorf("rendered plist = %#v\nwant            %#v", v, want)
	}
}

func TestParsePlistRejectsMalformed(t *testing.T) {
	tests := []struct{ name, doc string }{
		{"unclosed", `<plist version="1.0"><dict><key>A</key><true/></plist>`},
		{"not a plist", `<html></html>`},
		{"value without key", `<plist version="1.0"><dict><string>x</string></dict></plist>`},
		{"duplicate key", `<plist version="1.0"><dict><key>A</key><true/><key>A</key><false/></dict></plist>`},
		{"bad integer", `<plist version="1.0"><integer>x</integer></plist>`},
		{"unknown element", `<plist version="1.0"><float>1</float></plist>`},
	}
	for _, tt := range tests {
		if _, err := parsePlist([]byte(tt.doc)); err == nil {
			t.Errorf("%s: parsePlist accepted %s", tt.name, tt.doc)
		}
	}
}

// TestWindowsWxs checks the WiX source is well-formed and stays a per-user package: a ServiceInstall element
// would make the MSI fail (services need a per-machine install), and autostart must remain opt-in.
func TestWindowsWxs(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("windows", "agentidd.wxs"))
	if err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(bytes.NewReader(data))
	d.Strict = true
	var scope string
	levels := map[string]string{}
	elements := map[string]int{}
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("agentidd.wxs is not well-formed XML: %v", err)
		}
		se, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		elements[se.Name.Local]++
		attr := func(name string) string {
			for _, a := range se.Attr {
				if a.Name.Local == name {
					return a.Value
				}
			}
			return ""
		}
		switch se.Name.Local {
		case "Wix":
			if se.Name.Space != "http://wixtoolset.org/schemas/v4/wxs" {
				t.Errorf("Wix namespace %q is not WiX v4", se.Name.Space)
			}
		case "Package":
			scope = attr("Scope")
		case "Feature":
			levels[attr("Id")] = attr("Level")
		}
	}
	if scope != "perUser" {
		t.Errorf("Package Scope = %q, want perUser", scope)
	}
	if elements["ServiceInstall"] > 0 || elements["ServiceControl"] > 0 {
		t.Error("a per-user MSI cannot register a Windows service")
	}
	if levels["Main"] != "1" || levels["Autostart"] != "1000" {
		t.Errorf("feature levels = %v, want Main installed and Autostart opt-in", levels)
	}
}
