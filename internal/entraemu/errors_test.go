package entraemu_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/public"

	"github.com/agentidd/agentidd/internal/entraemu/emutest"
)

// env is a signed-in user plus the blueprint and agent clients, against one emulator.
type env struct {
	emu   *emutest.Emulator
	pub   public.Client
	user  public.AuthResult
	bp    confidential.Client
	agent confidential.Client
}

func (e *env) silent() error {
	_, err := e.pub.AcquireTokenSilent(context.Background(), []string{emutest.BlueprintUserScope}, public.WithSilentAccount(e.user.Account))
	return err
}

func (e *env) obo(scopes ...string) error {
	_, err := e.agent.AcquireTokenOnBehalfOf(context.Background(), e.user.AccessToken, scopes)
	return err
}

// freshBlueprint avoids MSAL's cache of exchange tokens so the request reaches the emulator.
func (e *env) exchange(t *testing.T, secret, agentID string) error {
	_, err := newBlueprint(t, e.emu, secret).AcquireTokenByCredential(context.Background(), []string{emutest.TokenExchangeScope}, confidential.WithFMIPath(agentID))
	return err
}

// TestMSALSurfacesErrors drives each failure through unmodified MSAL and checks the AADSTS code it reports. Tokens
// live 2 minutes so that MSAL (which ignores tokens with under 5 minutes left) always goes to the emulator.
func TestMSALSurfacesErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		setup func(t *testing.T, e *env)
		act   func(t *testing.T, e *env) error
		want  int
		in    string // a substring the error must also hold
	}{
		{name: "bad password on the sign-in page", want: 50126,
			act: func(t *testing.T, e *env) error {
				_, err := signIn(t, e.emu, newPublic(t, e.emu), emutest.DefaultUserUPN, "wrong")
				return err
			}},
		{name: "consent missing for Files.ReadWrite", want: 65001, in: `"suberror":"consent_required"`,
			act: func(t *testing.T, e *env) error { return e.obo(emutest.ResourceScopeWrite) }},
		{name: "consent withdrawn", want: 65001,
			setup: func(t *testing.T, e *env) {
				e.emu.WithdrawConsent(emutest.AgentAppID, emutest.ResourceAppID)
			},
			act: func(t *testing.T, e *env) error { return e.obo(emutest.ResourceScopeRead) }},
		{name: "MFA required on OBO", want: 50076, in: `"suberror":"basic_action"`,
			setup: func(t *testing.T, e *env) { e.emu.SetUserMFA(emutest.DefaultUserUPN, "required") },
			act:   func(t *testing.T, e *env) error { return e.obo(emutest.ResourceScopeRead) }},
		{name: "MFA enrollment on refresh", want: 50079, in: `"error":"interaction_required"`,
			setup: func(t *testing.T, e *env) { e.emu.SetUserMFA(emutest.DefaultUserUPN, "enrollment") },
			act:   func(t *testing.T, e *env) error { return e.silent() }},
		{name: "user assertion expired", want: 500133,
			setup: func(t *testing.T, e *env) { e.emu.ShiftClock(3 * time.Minute) },
			act:   func(t *testing.T, e *env) error { return e.obo(emutest.ResourceScopeRead) }},
		{name: "user assertion tampered", want: 50013,
			act: func(t *testing.T, e *env) error {
				tok := e.user.AccessToken
				e.user.AccessToken = tok[:len(tok)-4] + flip(tok[len(tok)-4:])
				return e.obo(emutest.ResourceScopeRead)
			}},
		{name: "user assertion for another audience", want: 50013, in: "audience",
			act: func(t *testing.T, e *env) error {
				r, err := e.bp.AcquireTokenByCredential(context.Background(), []string{emutest.TokenExchangeScope}, confidential.WithFMIPath(emutest.AgentAppID))
				if err != nil {
					return err
				}
				e.user.AccessToken = r.AccessToken
				return e.obo(emutest.ResourceScopeRead)
			}},
		{name: "refresh token inactive for 91 days", want: 700082,
			setup: func(t *testing.T, e *env) { e.emu.ShiftClock(91 * 24 * time.Hour) },
			act:   func(t *testing.T, e *env) error { return e.silent() }},
		{name: "sessions revoked", want: 50173,
			setup: func(t *testing.T, e *env) { e.emu.RevokeUserSessions(emutest.DefaultUserUPN) },
			act:   func(t *testing.T, e *env) error { return e.silent() }},
		{name: "sessions revoked, OBO with an older user token", want: 50173,
			setup: func(t *testing.T, e *env) { e.emu.RevokeUserSessions(emutest.DefaultUserUPN) },
			act:   func(t *testing.T, e *env) error { return e.obo(emutest.ResourceScopeRead) }},
		{name: "CAE re-auth required", want: 50133, in: `"claims":`,
			setup: func(t *testing.T, e *env) { e.emu.RequireReauth(emutest.DefaultUserUPN) },
			act:   func(t *testing.T, e *env) error { return e.silent() }},
		{name: "user disabled, refresh", want: 50057,
			setup: func(t *testing.T, e *env) { e.emu.SetUserEnabled(emutest.DefaultUserUPN, false) },
			act:   func(t *testing.T, e *env) error { return e.silent() }},
		{name: "user disabled, OBO", want: 50057,
			setup: func(t *testing.T, e *env) { e.emu.SetUserEnabled(emutest.DefaultUserUPN, false) },
			act:   func(t *testing.T, e *env) error { return e.obo(emutest.ResourceScopeRead) }},
		{name: "unknown app", want: 700016,
			act: func(t *testing.T, e *env) error {
				cred, _ := confidential.NewCredFromSecret("x")
				c, err := confidential.New(e.emu.Authority, "00000000-0000-4000-8000-000000000001", cred,
					confidential.WithHTTPClient(e.emu.HTTPClient()), confidential.WithInstanceDiscovery(false))
				if err != nil {
					return err
				}
				_, err = c.AcquireTokenByCredential(context.Background(), []string{emutest.ResourceAppIDURI + "/.default"})
				return err
			}},
		{name: "invalid blueprint secret", want: 7000215, in: "reply status code was 401",
			act: func(t *testing.T, e *env) error { return e.exchange(t, "not-the-secret", emutest.AgentAppID) }},
		{name: "agent identity disabled, exchange", want: 7000112,
			setup: func(t *testing.T, e *env) { e.emu.SetAgentEnabled(emutest.AgentAppID, false) },
			act:   func(t *testing.T, e *env) error { return e.exchange(t, emutest.BlueprintSecret, emutest.AgentAppID) }},
		{name: "agent identity disabled, OBO", want: 7000112,
			setup: func(t *testing.T, e *env) { e.emu.SetAgentEnabled(emutest.AgentAppID, false) },
			act:   func(t *testing.T, e *env) error { return e.obo(emutest.ResourceScopeRead) }},
		{name: "unknown scope", want: 70011,
			act: func(t *testing.T, e *env) error { return e.obo(emutest.ResourceAppIDURI + "/Files.Delete") }},
		{name: "client credentials without .default", want: 70011,
			act: func(t *testing.T, e *env) error {
				_, err := e.agent.AcquireTokenByCredential(context.Background(), []string{emutest.ResourceScopeRead})
				return err
			}},
		{name: "exchange for an agent of another blueprint", want: 700016,
			act: func(t *testing.T, e *env) error {
				return e.exchange(t, emutest.BlueprintSecret, emutest.PublicClientID)
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			emu := emutest.Start(t, emutest.Options{TokenLifetime: 2 * time.Minute})
			e := &env{emu: emu, pub: newPublic(t, emu)}
			var err error
			if e.user, err = signIn(t, emu, e.pub, emutest.DefaultUserUPN, emutest.DefaultUserPassword); err != nil {
				t.Fatalf("sign-in: %v", err)
			}
			e.bp = newBlueprint(t, emu, emutest.BlueprintSecret)
			e.agent = newAgent(t, emu, e.bp, emutest.AgentAppID)
			if tc.setup != nil {
				tc.setup(t, e)
			}
			err = tc.act(t, e)
			if err == nil {
				t.Fatalf("succeeded, want AADSTS%d", tc.want)
			}
			if got := aadsts(err); got != tc.want && !strings.Contains(err.Error(), "AADSTS"+strconv.Itoa(tc.want)) {
				t.Fatalf("AADSTS = %d, want %d; error: %v", got, tc.want, err)
			}
			t.Logf("error: %.300s", err)
			if tc.in != "" && !strings.Contains(err.Error(), tc.in) {
				t.Fatalf("error lacks %q: %v", tc.in, err)
			}
		})
	}
}

func flip(s string) string {
	b := []byte(s)
	for i := range b {
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
	}
	return string(b)
}
