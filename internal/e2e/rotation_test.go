package e2e

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/client"
	"github.com/agentidd/agentidd/internal/entraemu/emutest"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

const rotatedSecret = "blueprint-rotated-secret-2"

// TestSecretRotationWhileRunning rotates the blueprint secret under a running daemon: the next exchange presents the
// new secret (the emulator accepts both during the rotation), a broken rotation is refused as AGENT_REJECTED without
// the secret in the message, and setting a working secret again recovers without a restart.
func TestSecretRotationWhileRunning(t *testing.T) {
	def, err := os.ReadFile(filepath.Join("..", "entraemu", "default_directory.json"))
	if err != nil {
		t.Fatal(err)
	}
	old := `"secrets": ["` + emutest.BlueprintSecret + `"]`
	if !strings.Contains(string(def), old) {
		t.Fatalf("default directory no longer has %s", old)
	}
	dir := filepath.Join(t.TempDir(), "directory.json")
	rotated := strings.Replace(string(def), old, `"secrets": ["`+emutest.BlueprintSecret+`", "`+rotatedSecret+`"]`, 1)
	if err := os.WriteFile(dir, []byte(rotated), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{directory: dir})
	e.login()
	c := e.conn()
	e.tokenWithApproval(c, emutest.ResourceScopeRead)
	forced := &agentidv1.GetTokenRequest{Agent: testAgent, Scopes: []string{emutest.ResourceScopeRead}, ForceRefresh: true}
	blueprintCalls := func() int { return e.counters().ByClientID[emutest.BlueprintAppID] }

	// Without a rotation the blueprint's exchange token comes from MSAL's cache: no new blueprint request.
	before := blueprintCalls()
	if _, err := c.Agent.GetToken(context.Background(), forced); err != nil {
		t.Fatal(err)
	}
	if got := blueprintCalls(); got != before {
		t.Fatalf("blueprint called %d times without a rotation", got-before)
	}

	e.cliInput(rotatedSecret, "secret", "set", "--blueprint", emutest.BlueprintAppID)
	if _, err := c.Agent.GetToken(context.Background(), forced); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if got := blueprintCalls(); got != before+1 {
		t.Fatalf("the rotated secret was not presented: %d blueprint requests, want 1", got-before)
	}

	const wrong = "not-the-blueprint-secret"
	e.cliInput(wrong, "secret", "set", "--blueprint", emutest.BlueprintAppID)
	_, err = c.Agent.GetToken(context.Background(), forced)
	if status.Code(err) != codes.PermissionDenied || client.Reason(err) != "AGENT_REJECTED" {
		t.Fatalf("wrong secret: got %v / %q, want PermissionDenied / AGENT_REJECTED", err, client.Reason(err))
	}
	if strings.Contains(err.Error(), wrong) || strings.Contains(e.log.String(), wrong) {
		t.Error("the secret appears in the error or the daemon log")
	}

	e.cliInput(rotatedSecret, "secret", "set", "--blueprint", emutest.BlueprintAppID)
	tok, err := c.Agent.GetToken(context.Background(), forced)
	if err != nil || tok.GetAccessToken() == "" {
		t.Fatalf("after fixing the secret: %v", err)
	}
}

// TestBlueprintCertificateCredential: a blueprint that has only a certificate (no secret) at the IdP works once its
// certificate and key are imported with `agentidd secret set --blueprint ID --cert FILE`: MSAL signs a client assertion.
func TestBlueprintCertificateCredential(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "demo-blueprint"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})

	def, err := os.ReadFile(filepath.Join("..", "entraemu", "default_directory.json"))
	if err != nil {
		t.Fatal(err)
	}
	old := `"secrets": ["` + emutest.BlueprintSecret + `"]`
	certJSON, _ := json.Marshal(string(certPEM))
	withCert := strings.Replace(string(def), old, `"secrets": [], "certificates": [`+string(certJSON)+`]`, 1)
	if withCert == string(def) {
		t.Fatalf("default directory no longer has %s", old)
	}
	tmp := t.TempDir()
	dirFile := filepath.Join(tmp, "directory.json")
	if err := os.WriteFile(dirFile, []byte(withCert), 0o600); err != nil {
		t.Fatal(err)
	}
	credFile := filepath.Join(tmp, "blueprint.pem")
	if err := os.WriteFile(credFile, append(certPEM, keyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}

	e := newEnv(t, envOptions{directory: dirFile})
	e.cli("secret", "set", "--blueprint", emutest.BlueprintAppID, "--cert", credFile)
	e.login()
	tok := e.tokenWithApproval(e.conn(), emutest.ResourceScopeRead)
	claims := verifyToken(t, e, tok.AccessToken)
	if claims["azp"] != emutest.AgentAppID || claims["oid"] != emutest.DefaultUserOID {
		t.Errorf("claims: azp=%v oid=%v", claims["azp"], claims["oid"])
	}
	e.stopDaemon()
	assertNoSecrets(t, e.log.String(), "daemon log", string(keyPEM[100:160])) // a run of the key itself, not the PEM armour
}
