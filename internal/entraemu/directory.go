package entraemu

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
)

//go:embed default_directory.json
var defaultDirectoryJSON []byte

// TokenExchangeAppID is the app id behind api://AzureADTokenExchange: the audience of a blueprint's exchange token.
const TokenExchangeAppID = "fb60f99c-7a34-4190-8149-302f77469936"

// tokenExchangeURI is the app id URI the exchange scope is requested with.
const tokenExchangeURI = "api://AzureADTokenExchange"

// App kinds.
const (
	KindPublic        = "public"         // a public client: device code, auth code, refresh
	KindConfidential  = "confidential"   // an ordinary confidential client (secret or certificate)
	KindBlueprint     = "blueprint"      // an agent identity blueprint: confidential, may use fmi_path
	KindAgentIdentity = "agent_identity" // holds no credential; authenticates with its blueprint's exchange token
	KindResource      = "resource"       // an API that only exposes scopes and roles
)

// Directory is the emulator's tenant: users, applications and who consented to what. One tenant per emulator.
type Directory struct {
	Tenant          Tenant            `json:"tenant"`
	Users           []*User           `json:"users"`
	Apps            []*App            `json:"apps"`
	Consents        []*Consent        `json:"consents"`
	RoleAssignments []*RoleAssignment `json:"role_assignments"`
}

// Tenant names the one tenant.
type Tenant struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// User is a member user who signs in with a password.
type User struct {
	UPN         string `json:"upn"`
	Password    string `json:"password"`
	OID         string `json:"oid"`
	DisplayName string `json:"display_name"`
	Disabled    bool   `json:"disabled,omitempty"`
	// MFA is "" (none), "required" (OBO and refresh answer AADSTS50076) or "enrollment" (AADSTS50079).
	MFA string `json:"mfa,omitempty"`
}

// App is an application registration (with its service principal) of any kind.
type App struct {
	Name         string   `json:"name"`
	AppID        string   `json:"app_id"`
	Kind         string   `json:"kind"`
	ObjectID     string   `json:"object_id,omitempty"` // service principal object id; defaults to app_id
	GrantTypes   []string `json:"grant_types,omitempty"`
	RedirectURIs []string `json:"redirect_uris,omitempty"`
	Secrets      []string `json:"secrets,omitempty"`
	Certificates []string `json:"certificates,omitempty"` // PEM certificates accepted for client assertions
	AppIDURI     string   `json:"app_id_uri,omitempty"`
	Scopes       []string `json:"scopes,omitempty"`
	AppRoles     []string `json:"app_roles,omitempty"`
	Parent       string   `json:"parent,omitempty"` // agent identity: its blueprint's app id
	Disabled     bool     `json:"disabled,omitempty"`
}

// Consent is an admin consent: Client may ask for Scopes on Resource for any user.
type Consent struct {
	Client   string   `json:"client"`
	Resource string   `json:"resource"`
	Scopes   []string `json:"scopes"`
}

// RoleAssignment gives Principal (an app) the app role Role on Resource.
type RoleAssignment struct {
	Principal string `json:"principal"`
	Resource  string `json:"resource"`
	Role      string `json:"role"`
}

var guidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// DefaultDirectory returns a fresh copy of the embedded demo directory.
func DefaultDirectory() *Directory {
	d, err := ParseDirectory("default_directory.json", bytes.NewReader(defaultDirectoryJSON))
	if err != nil {
		// The embedded file is checked by TestDefaultDirectory; reaching this is a build defect.
		panic("entraemu: embedded directory: " + err.Error())
	}
	return d
}

// LoadDirectory reads and validates a directory file.
func LoadDirectory(path string) (*Directory, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening directory: %w", err)
	}
	defer f.Close()
	return ParseDirectory(path, f)
}

// ParseDirectory decodes a directory. Unknown keys and dangling references are errors naming the file and the key.
func ParseDirectory(name string, r io.Reader) (*Directory, error) {
	dec := json.NewDecoder(io.LimitReader(r, 16<<20))
	dec.DisallowUnknownFields()
	var d Directory
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("directory %s: %w", name, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("directory %s: trailing data after the JSON object", name)
	}
	if err := d.validate(); err != nil {
		return nil, fmt.Errorf("directory %s: %w", name, err)
	}
	return &d, nil
}

func (d *Directory) validate() error {
	if !guidRE.MatchString(d.Tenant.ID) {
		return fmt.Errorf("tenant.id: %q is not a GUID", d.Tenant.ID)
	}
	if d.Tenant.Name == "" || strings.Contains(strings.ToLower(d.Tenant.Name), "token") || strings.ContainsAny(d.Tenant.Name, "/?#") {
		// MSAL derives the device-code URL by replacing "token" in the token endpoint, so the tenant must not hold it.
		return fmt.Errorf("tenant.name: %q must be non-empty, without '/' and without the substring \"token\"", d.Tenant.Name)
	}
	upns := map[string]bool{}
	oids := map[string]bool{}
	for i, u := range d.Users {
		if u == nil {
			return fmt.Errorf("users[%d]: null", i)
		}
		key := fmt.Sprintf("users[%d]", i)
		if u.UPN == "" || !strings.Contains(u.UPN, "@") {
			return fmt.Errorf("%s.upn: %q is not a UPN", key, u.UPN)
		}
		if upns[strings.ToLower(u.UPN)] {
			return fmt.Errorf("%s.upn: duplicate %q", key, u.UPN)
		}
		upns[strings.ToLower(u.UPN)] = true
		if !guidRE.MatchString(u.OID) || oids[strings.ToLower(u.OID)] {
			return fmt.Errorf("%s.oid: %q is not a unique GUID", key, u.OID)
		}
		oids[strings.ToLower(u.OID)] = true
		if u.Password == "" {
			return fmt.Errorf("%s.password: empty", key)
		}
		if u.MFA != "" && u.MFA != "required" && u.MFA != "enrollment" {
			return fmt.Errorf("%s.mfa: %q is not one of \"\", \"required\", \"enrollment\"", key, u.MFA)
		}
	}
	apps := map[string]*App{}
	for i, a := range d.Apps {
		if a == nil {
			return fmt.Errorf("apps[%d]: null", i)
		}
		key := fmt.Sprintf("apps[%d] (%q)", i, a.Name)
		if !guidRE.MatchString(a.AppID) {
			return fmt.Errorf("%s.app_id: %q is not a GUID", key, a.AppID)
		}
		id := strings.ToLower(a.AppID)
		if apps[id] != nil || id == TokenExchangeAppID {
			return fmt.Errorf("%s.app_id: duplicate or reserved %q", key, a.AppID)
		}
		apps[id] = a
		if a.ObjectID != "" && !guidRE.MatchString(a.ObjectID) {
			return fmt.Errorf("%s.object_id: %q is not a GUID", key, a.ObjectID)
		}
		switch a.Kind {
		case KindPublic:
			for j, g := range a.GrantTypes {
				if !slices.Contains([]string{"device_code", "authorization_code", "refresh_token"}, g) {
					return fmt.Errorf("%s.grant_types[%d]: %q is not device_code, authorization_code or refresh_token", key, j, g)
				}
			}
			if len(a.Secrets) > 0 || len(a.Certificates) > 0 {
				return fmt.Errorf("%s.secrets: a public client holds no credential", key)
			}
		case KindConfidential, KindBlueprint:
			for j, c := range a.Certificates {
				if _, err := parseCertPEM(c); err != nil {
					return fmt.Errorf("%s.certificates[%d]: %w", key, j, err)
				}
			}
		case KindAgentIdentity:
			if len(a.Secrets) > 0 || len(a.Certificates) > 0 {
				return fmt.Errorf("%s.secrets: an agent identity holds no credential", key)
			}
		case KindResource:
		default:
			return fmt.Errorf("%s.kind: %q is not one of public, confidential, blueprint, agent_identity, resource", key, a.Kind)
		}
		for j, u := range a.RedirectURIs {
			if !strings.HasPrefix(u, "http://localhost") && !strings.HasPrefix(u, "http://127.0.0.1") && !strings.HasPrefix(u, "https://") {
				return fmt.Errorf("%s.redirect_uris[%d]: %q must be a loopback http URL or https", key, j, u)
			}
		}
	}
	for i, a := range d.Apps {
		key := fmt.Sprintf("apps[%d] (%q)", i, a.Name)
		if a.Kind == KindAgentIdentity {
			p := apps[strings.ToLower(a.Parent)]
			if p == nil || p.Kind != KindBlueprint {
				return fmt.Errorf("%s.parent: no blueprint with app_id %q", key, a.Parent)
			}
		} else if a.Parent != "" {
			return fmt.Errorf("%s.parent: only an agent_identity has a parent", key)
		}
	}
	for i, c := range d.Consents {
		if c == nil {
			return fmt.Errorf("consents[%d]: null", i)
		}
		key := fmt.Sprintf("consents[%d]", i)
		if apps[strings.ToLower(c.Client)] == nil {
			return fmt.Errorf("%s.client: no app with app_id %q", key, c.Client)
		}
		res := apps[strings.ToLower(c.Resource)]
		if res == nil {
			return fmt.Errorf("%s.resource: no app with app_id %q", key, c.Resource)
		}
		for j, s := range c.Scopes {
			if !containsFold(res.Scopes, s) {
				return fmt.Errorf("%s.scopes[%d]: %q is not a scope of %q", key, j, s, res.Name)
			}
		}
	}
	for i, ra := range d.RoleAssignments {
		if ra == nil {
			return fmt.Errorf("role_assignments[%d]: null", i)
		}
		key := fmt.Sprintf("role_assignments[%d]", i)
		if apps[strings.ToLower(ra.Principal)] == nil {
			return fmt.Errorf("%s.principal: no app with app_id %q", key, ra.Principal)
		}
		res := apps[strings.ToLower(ra.Resource)]
		if res == nil {
			return fmt.Errorf("%s.resource: no app with app_id %q", key, ra.Resource)
		}
		if !containsFold(res.AppRoles, ra.Role) {
			return fmt.Errorf("%s.role: %q is not an app role of %q", key, ra.Role, res.Name)
		}
	}
	return nil
}

func containsFold(list []string, s string) bool {
	return slices.ContainsFunc(list, func(x string) bool { return strings.EqualFold(x, s) })
}

// clone deep-copies the directory so the admin API can mutate it without touching the caller's value.
func (d *Directory) clone() *Directory {
	b, err := json.Marshal(d)
	if err != nil {
		panic("entraemu: directory does not marshal: " + err.Error())
	}
	var c Directory
	if err := json.Unmarshal(b, &c); err != nil {
		panic("entraemu: directory does not unmarshal: " + err.Error())
	}
	return &c
}

func (d *Directory) app(id string) *App {
	for _, a := range d.Apps {
		if strings.EqualFold(a.AppID, id) {
			return a
		}
	}
	return nil
}

func (d *Directory) userByUPN(upn string) *User {
	for _, u := range d.Users {
		if strings.EqualFold(u.UPN, upn) {
			return u
		}
	}
	return nil
}

func (d *Directory) userByOID(oid string) *User {
	for _, u := range d.Users {
		if strings.EqualFold(u.OID, oid) {
			return u
		}
	}
	return nil
}

// resource finds an API by app id URI, app id or api://<app id>.
func (d *Directory) resource(ident string) *App {
	if strings.EqualFold(ident, tokenExchangeURI) || strings.EqualFold(ident, TokenExchangeAppID) {
		return tokenExchangeApp
	}
	for _, a := range d.Apps {
		if (a.AppIDURI != "" && strings.EqualFold(a.AppIDURI, ident)) || strings.EqualFold(a.AppID, ident) ||
			strings.EqualFold("api://"+a.AppID, ident) {
			return a
		}
	}
	return nil
}

var tokenExchangeApp = &App{Name: "AzureADTokenExchange", AppID: TokenExchangeAppID, Kind: KindResource, AppIDURI: tokenExchangeURI}

// consented returns the scopes client may use on resource.
func (d *Directory) consented(client, resource string) []string {
	var out []string
	for _, c := range d.Consents {
		if strings.EqualFold(c.Client, client) && strings.EqualFold(c.Resource, resource) {
			out = append(out, c.Scopes...)
		}
	}
	return out
}

func (d *Directory) roles(principal, resource string) []string {
	var out []string
	for _, ra := range d.RoleAssignments {
		if strings.EqualFold(ra.Principal, principal) && strings.EqualFold(ra.Resource, resource) {
			out = append(out, ra.Role)
		}
	}
	return out
}

func (a *App) objectID() string {
	if a.ObjectID != "" {
		return a.ObjectID
	}
	return a.AppID
}
