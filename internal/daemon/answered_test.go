package daemon

import (
	"errors"
	"testing"

	"github.com/agentidd/agentidd/internal/broker"
	"github.com/agentidd/agentidd/internal/entra"
)

// Only the IdP's own answer shows it reachable: a refusal answered from memory or decided here, or a transport
// failure, must not put an offline daemon back online.
func TestIdPAnswered(t *testing.T) {
	refusal := &entra.Error{Class: entra.ClassPermanent, Subject: entra.SubjectAgent, Status: 401, AADSTS: 7000112}
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"refusal from the IdP", refusal, true},
		{"challenge from the IdP", &entra.Error{Class: entra.ClassInteraction, Status: 400, AADSTS: 50076}, true},
		{"refusal from memory", &rememberedError{r: &idpRefusal{err: refusal}}, false},
		{"no grant", broker.ErrGrantGone, false},
		{"throttled", &entra.Error{Class: entra.ClassTransient, Status: 429}, false},
		{"network", &entra.Error{Class: entra.ClassTransient}, false},
		{"local", errors.New("no credential"), false},
	}
	for _, tc := range cases {
		if got := idpAnswered(tc.err); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
