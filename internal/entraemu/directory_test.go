package entraemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDefaultDirectory(t *testing.T) {
	d := DefaultDirectory()
	if d.Tenant.ID != tTenant || d.userByUPN(tUPN) == nil || d.app(tAgent).Parent != tBlueprint {
		t.Fatalf("default directory: %+v", d.Tenant)
	}
	if got := d.consented(tAgent, "e5f6a7b8-c9d0-4e1f-8a2b-3c4d5e6f7a8b"); len(got) != 1 || got[0] != "Files.Read" {
		t.Fatalf("agent consent = %v", got)
	}
}

func TestParseDirectoryRefusals(t *testing.T) {
	base := string(defaultDirectoryJSON)
	cases := []struct {
		name, from, to, want string
	}{
		{"unknown top-level key", `"users": [`, `"groups": [], "users": [`, `unknown field "groups"`},
		{"unknown app key", `"kind": "resource",`, `"kind": "resource", "color": "red",`, `unknown field "color"`},
		{"dangling parent", `"parent": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"`, `"parent": "a1b2c3d4-e5f6-4a7b-8c9d-000000000000"`, `apps[2] ("demo-agent").parent`},
		{"dangling consent client", `{"client": "c7d8e9f0`, `{"client": "c7d8e9f1`, `consents[1].client`},
		{"consent for an unknown scope", `"scopes": ["Files.Read"]}`, `"scopes": ["Files.Delete"]}`, `consents[1].scopes[0]`},
		{"dangling role", `"role": "Files.Read.All"`, `"role": "Files.Write.All"`, `role_assignments[0].role`},
		{"bad kind", `"kind": "resource"`, `"kind": "api"`, `apps[3] ("files").kind`},
		{"tenant name with token", `"name": "contoso"`, `"name": "tokenco"`, `tenant.name`},
		{"duplicate app id", `"app_id": "e5f6a7b8-c9d0-4e1f-8a2b-3c4d5e6f7a8b"`, `"app_id": "c7d8e9f0-a1b2-4c3d-9e4f-5a6b7c8d9e0f"`, `apps[3] ("files").app_id`},
		{"public client with a secret", `"redirect_uris": ["http://localhost"]`, `"redirect_uris": ["http://localhost"], "secrets": ["s"]`, `apps[0] ("agentidd").secrets`},
		{"trailing data", "\n}\n", "\n}\n{}", "trailing data"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(base, tc.from) {
				t.Fatalf("fixture lacks %q", tc.from)
			}
			path := filepath.Join(t.TempDir(), "dir.json")
			if err := os.WriteFile(path, []byte(strings.Replace(base, tc.from, tc.to, 1)), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadDirectory(path)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("err = %v, want file name and %q", err, tc.want)
			}
		})
	}
}

func TestGuidB64(t *testing.T) {
	// Recomputed from Entra's .NET little-endian GUID layout (ENTRA-NOTES §1).
	if got := guidB64(tTenant); got != "ECo8f45bHUyaby5LjQwakw" {
		t.Fatalf("guidB64 = %s", got)
	}
}
