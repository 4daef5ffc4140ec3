package entra_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/agentidd/agentidd/internal/entra"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
)

// Concurrent exchanges that all find the user's token due for renewal must not each redeem the refresh token: the
// emulator, like an IdP that rotates refresh tokens, revokes the whole family on the second redemption of one, which
// signed the user out in the middle of a refresh storm. With a token lifetime under MSAL's 5-minute margin every silent
// call renews, so every round of concurrent calls here would race without serialisation.
func TestUserTokenConcurrentRenewalsKeepTheSignIn(t *testing.T) {
	emu := emutest.Start(t, emutest.Options{TokenLifetime: 4 * time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := signedInClient(t, ctx, emu)
	emu.ResetCounters()

	const rounds, concurrent = 5, 8
	for r := range rounds {
		var wg sync.WaitGroup
		errs := make(chan error, concurrent)
		for range concurrent {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := c.UserToken(ctx); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("round %d: UserToken: %v", r, err)
		}
	}
	cn, err := emu.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if got := cn.ByGrantType["refresh_token"]; got != rounds*concurrent {
		t.Errorf("refresh token redemptions = %d, want one per call (%d): the test did not renew every time", got, rounds*concurrent)
	}
}

// signedInClient is an entra client for emu (with the blueprint's secret), signed in as the default user through the
// emulator's device-code page.
func signedInClient(t *testing.T, ctx context.Context, emu *emutest.Emulator) *entra.Client {
	t.Helper()
	return signedInClientWith(t, ctx, emu, func() (string, error) { return emutest.BlueprintSecret, nil })
}

// signedInClientWith is signedInClient with the blueprint credential read by secret.
func signedInClientWith(t *testing.T, ctx context.Context, emu *emutest.Emulator, secret func() (string, error)) *entra.Client {
	t.Helper()
	c, err := entra.New(entra.Config{Authority: emu.Authority, ClientID: emutest.PublicClientID,
		BlueprintAppID: emutest.BlueprintAppID, UserScopes: []string{emutest.BlueprintUserScope},
		HTTPClient: emu.HTTPClient(), DevAuthority: true, BlueprintSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	prompts := make(chan entra.DeviceCodePrompt, 1)
	signedIn := make(chan error, 1)
	go func() {
		_, err := c.LoginDeviceCode(ctx, func(p entra.DeviceCodePrompt) { prompts <- p })
		signedIn <- err
	}()
	p := <-prompts
	if err := emu.CompleteDeviceCode(p.VerificationURI, p.UserCode, emutest.DefaultUserUPN, emutest.DefaultUserPassword); err != nil {
		t.Fatal(err)
	}
	if err := <-signedIn; err != nil {
		t.Fatal(err)
	}
	return c
}

// TestUserTokenRefusalIsTheUsers: when the IdP refuses to renew the user's token because of the sign-in app (the
// public client disabled, here AADSTS7000112 unauthorized_client), the code alone says "an app was refused", which
// the daemon reads as the agent identity: it purged and alerted about each agent in turn and told the user to check
// the agent's blueprint credential, none of which is at fault. The refused principal is the user's sign-in.
func TestUserTokenRefusalIsTheUsers(t *testing.T) {
	emu := emutest.Start(t, emutest.Options{TokenLifetime: 4 * time.Minute}) // under MSAL's 5 min: every call renews
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := signedInClient(t, ctx, emu)
	emu.SetAgentEnabled(emutest.PublicClientID, false)

	_, err := c.OnBehalfOf(ctx, emutest.AgentAppID, []string{emutest.ResourceScopeRead}, "")
	e := entra.Classify(err)
	if e.AADSTS != 7000112 {
		t.Fatalf("exchange with the sign-in app disabled: %v, want the IdP's AADSTS7000112", err)
	}
	if e.Class != entra.ClassPermanent || e.Subject != entra.SubjectUser {
		t.Errorf("class %v subject %v, want %v subject %v (the user's sign-in)", e.Class, e.Subject, entra.ClassPermanent, entra.SubjectUser)
	}
}
