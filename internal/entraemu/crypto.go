package entraemu

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // x5t is defined as a SHA-1 thumbprint (RFC 7515 §4.1.7)
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"time"
)

// CA is the emulator's own certificate authority. Its certificate is what clients are told to trust.
type CA struct {
	CertPEM []byte `json:"cert_pem"`
	KeyDER  []byte `json:"key_der"` // PKCS#8
}

// NewCA generates a fresh ECDSA P-256 CA valid for 30 days.
func NewCA() (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(),
		Subject:               pkix.Name{CommonName: "entra-emulator local CA", Organization: []string{"agentidd"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(30 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating CA certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding CA key: %w", err)
	}
	return &CA{CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), KeyDER: kder}, nil
}

// ServerCertificate issues a leaf for 127.0.0.1 and localhost.
func (ca *CA) ServerCertificate() (tls.Certificate, error) {
	caCert, err := parseCertPEM(string(ca.CertPEM))
	if err != nil {
		return tls.Certificate{}, err
	}
	k, err := x509.ParsePKCS8PrivateKey(ca.KeyDER)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("parsing CA key: %w", err)
	}
	caKey, ok := k.(crypto.Signer)
	if !ok {
		return tls.Certificate{}, errors.New("CA key cannot sign")
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generating server key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     caCert.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("creating server certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der, caCert.Raw}, PrivateKey: leafKey}, nil
}

func randSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

func parseCertPEM(s string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing certificate: %w", err)
	}
	return c, nil
}

// signingKey is one token-signing key. The first key in the emulator's list signs; the others stay in the JWKS so
// tokens signed before a rotation keep verifying.
type signingKey struct {
	Kid    string `json:"kid"`
	KeyDER []byte `json:"key_der"` // PKCS#1
	key    *rsa.PrivateKey
}

func newSigningKey() (*signingKey, error) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("generating signing key: %w", err)
	}
	sum := sha256.Sum256(x509.MarshalPKCS1PublicKey(&k.PublicKey))
	return &signingKey{Kid: base64.RawURLEncoding.EncodeToString(sum[:15]), KeyDER: x509.MarshalPKCS1PrivateKey(k), key: k}, nil
}

func (s *signingKey) load() error {
	if s.key != nil {
		return nil
	}
	k, err := x509.ParsePKCS1PrivateKey(s.KeyDER)
	if err != nil {
		return fmt.Errorf("parsing signing key %s: %w", s.Kid, err)
	}
	s.key = k
	return nil
}

func (s *signingKey) jwk() map[string]any {
	pub := &s.key.PublicKey
	return map[string]any{
		"kty": "RSA", "use": "sig", "alg": "RS256", "kid": s.Kid,
		"n": base64.RawURLEncoding.EncodeToString(pub.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(pub.E)).Bytes()),
	}
}

func (s *signingKey) sign(claims map[string]any) (string, error) {
	h, err := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": s.Kid})
	if err != nil {
		return "", err
	}
	p, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("encoding claims: %w", err)
	}
	input := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(p)
	sum := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, sum[:])
	if err != nil {
		return "", fmt.Errorf("signing: %w", err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// jwtParts is a compact JWS split and decoded, not yet verified.
type jwtParts struct {
	header  map[string]any
	claims  map[string]any
	input   string
	sig     []byte
	headerS map[string]string
}

var errMalformedJWT = errors.New("malformed JWT")

func splitJWT(tok string) (*jwtParts, error) {
	if len(tok) > 64<<10 {
		return nil, errMalformedJWT
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, errMalformedJWT
	}
	hb, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	pb, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil {
		return nil, errMalformedJWT
	}
	j := &jwtParts{input: parts[0] + "." + parts[1], sig: sig, headerS: map[string]string{}}
	if json.Unmarshal(hb, &j.header) != nil || json.Unmarshal(pb, &j.claims) != nil || j.header == nil || j.claims == nil {
		return nil, errMalformedJWT
	}
	for k, v := range j.header {
		if s, ok := v.(string); ok {
			j.headerS[k] = s
		}
	}
	return j, nil
}

// verifyRSA checks an RS256 or PS256 signature.
func (j *jwtParts) verifyRSA(pub *rsa.PublicKey) error {
	sum := sha256.Sum256([]byte(j.input))
	switch j.headerS["alg"] {
	case "RS256":
		return rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], j.sig)
	case "PS256":
		return rsa.VerifyPSS(pub, crypto.SHA256, sum[:], j.sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
	default:
		return fmt.Errorf("algorithm %q not accepted", j.headerS["alg"])
	}
}

func (j *jwtParts) str(name string) string {
	s, _ := j.claims[name].(string)
	return s
}

// num reads a NumericDate claim.
func (j *jwtParts) num(name string) (int64, bool) {
	switch v := j.claims[name].(type) {
	case float64:
		return int64(v), true
	case string:
		var n json.Number = json.Number(v)
		i, err := n.Int64()
		return i, err == nil
	}
	return 0, false
}

// thumbprints of a certificate in the encodings clients use: MSAL sends standard base64, the RFC says base64url.
func certThumbprints(c *x509.Certificate) (sha1s, sha256s []string) {
	s1 := sha1.Sum(c.Raw) //nolint:gosec // see import
	s2 := sha256.Sum256(c.Raw)
	enc := func(b []byte) []string {
		return []string{base64.StdEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b),
			base64.URLEncoding.EncodeToString(b), base64.RawStdEncoding.EncodeToString(b), hex.EncodeToString(b)}
	}
	return enc(s1[:]), enc(s2[:])
}

func randString(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("entraemu: crypto/rand: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func newUUID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic("entraemu: crypto/rand: " + err.Error())
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// guidB64 is the unpadded base64url of a GUID's .NET (little-endian) byte layout, as Entra puts it in an fmi sub.
func guidB64(g string) string {
	h, err := hex.DecodeString(strings.ReplaceAll(g, "-", ""))
	if err != nil || len(h) != 16 {
		return g
	}
	b := []byte{h[3], h[2], h[1], h[0], h[5], h[4], h[7], h[6]}
	b = append(b, h[8:]...)
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashToken(t string) string {
	s := sha256.Sum256([]byte(t))
	return hex.EncodeToString(s[:])
}

func rsaPublic(c *x509.Certificate) (*rsa.PublicKey, bool) {
	k, ok := c.PublicKey.(*rsa.PublicKey)
	return k, ok
}
