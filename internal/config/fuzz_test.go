package config

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
)

// FuzzParse feeds hostile text to both parsers and to the shape check. None
// may panic; an error must name the file; and the shape check must never
// refuse text the decoder reads whose keys and nesting are within its bounds
// (a false refusal would lock a user out of a valid config).
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		base + agent,
		base + "agent = [{ name = \"mail\", app_id = \"c7d8e9f0-a1b2-4c3d-9e4f-5a6b7c8d9e0f\", binding = [{ exe = \"/a.b\", sha256 = \"x\" }] }]\n",
		"allowed_agents = [\"c7d8e9f0-a1b2-4c3d-9e4f-5a6b7c8d9e0f\"]\nmax_grant = \"8h\"\ndeny_app_mode = true\n",
		"a.b.c = { d.e = [ { f = \"\"\"x.y\"{{\"\"\" } ] }\n",
		"[a.\"b.c\".'d']\n[[e.f]]\ng = '''h''''\n",
		"x = \"\\\"{.\"\ny = 1.5e3\nz = 1979-05-27T07:32:00.999Z\n",
		"a = {\n  b = 1, # comment { [\n  c = [1,\n 2],\n}\n",
		"x = " + strings.Repeat("{a=", 20) + "1" + strings.Repeat("}", 20),
		"x" + strings.Repeat(".a", 20) + " = 1",
		"\xff = 1", "a = \"\x00\"", "a = 1\na = 2\n", "[a]\n[a]\n", "a = [[[[[",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const path = "/fuzz/config.toml"
		if _, err := Parse(path, data); err != nil && !strings.Contains(err.Error(), path) {
			t.Fatalf("config error does not name the file: %v", err)
		}
		if _, err := parsePolicy(path, data); err != nil && !strings.Contains(err.Error(), path) {
			t.Fatalf("policy error does not name the file: %v", err)
		}
		if checkShape(data) == nil || !utf8.Valid(data) {
			return
		}
		var v map[string]any
		md, err := toml.Decode(string(data), &v)
		if err != nil {
			return
		}
		for _, k := range md.Keys() {
			if len(k) > maxKeyDepth {
				return
			}
		}
		if nesting(v) > maxNesting {
			return
		}
		t.Fatalf("shape check refused text the decoder reads within bounds: %v", checkShape(data))
	})
}

func nesting(v any) int {
	deepest := 0
	switch v := v.(type) {
	case map[string]any:
		for _, e := range v {
			deepest = max(deepest, nesting(e))
		}
	case []map[string]any:
		for _, e := range v {
			deepest = max(deepest, nesting(e))
		}
	case []any:
		for _, e := range v {
			deepest = max(deepest, nesting(e))
		}
	default:
		return 0
	}
	return deepest + 1
}
