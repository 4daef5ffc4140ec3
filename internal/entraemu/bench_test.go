package entraemu

import (
	"net/url"
	"testing"
)

func BenchmarkClientCredentials(b *testing.B) {
	h := newHarness(b, Config{})
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {tBlueprint}, "client_secret": {tSecret}, "scope": {tExchange}, "fmi_path": {tAgent}}
	b.ReportAllocs()
	for b.Loop() {
		if r := h.token(form); r.status != 200 {
			b.Fatalf("%d %s", r.status, r.body)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
}

func BenchmarkOBO(b *testing.B) {
	h := newHarness(b, Config{})
	form := url.Values{
		"grant_type": {grantJWTBearer}, "client_id": {tAgent}, "client_assertion_type": {assertionTypeJWT},
		"client_assertion": {h.exchange(tAgent)}, "assertion": {h.signIn().str("access_token")}, "requested_token_use": {"on_behalf_of"},
		"scope": {tFilesRead}, "client_info": {"1"},
	}
	b.ReportAllocs()
	for b.Loop() {
		if r := h.token(form); r.status != 200 {
			b.Fatalf("%d %s", r.status, r.body)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
}
