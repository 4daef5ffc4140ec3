package entraemu

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"
)

// Fixed RSA keys for fuzz targets. Fuzz workers run instrumented code in which generating a 2048-bit key takes tens of
// seconds, so each worker's setup would eat the whole fuzz budget. These keys protect nothing.
const (
	fuzzSigningKeyPEM = `-----BEGIN RSA PRIVATE KEY-----
MIIEpAIBAAKCAQEAtCaM/gFMfG4YpjPnWjKDIdeMR3awRiMxJs95ft5zBl6/YAE1
M8l0TV90jG3IvFl1Rr3Gxi6QUriEUHqz4I0Vk7tOTdiLANAOflqAG+LydO0wSZUE
+NwqvHLJrm+sfMb3UpTGaewqa2Xd4djFsPHLw1n1TvPj0u4trUjG3vxXuFt9okeu
Xk3dgtwor6S1rFoO879H7qN/KCQ9fXeTdNdnOkjEbtr5Ukrlm9kiIxM5n6F8JIqO
RHGtIeB/QmfDvgraAFwzKUl6rQ7Nnsq6ecXZIWkruL7UmZq9r3D3GpefRd8iBgoJ
jUvkrD5BRpts2wIalI/SbL0dm9RObF/hgFV90wIDAQABAoIBACN+NOkWeGtLha+5
KiurKArS3OB3keM/q79pwRYt3ZuzryDLHCBH4JId7Gh+eL4jIef+G9uP8P9bOzZf
9nCXW1jv3k2YDErssu5SBkt4OyyuToUwxvoA5qqaMwIbHnC3AqNSjITx8qmWOFD2
1Hw4J10lrB8SDiDQrE8nt4bXULERgN+fzYjwQokcncaS13azWxXFap4ksbHdNtPh
BpnYpwPXPV+7p42/jmqN/dzxyl2hiUh8KNgx6Yw2QgwcWn8UB6yLZtzds/Ql6ywo
9D2REbA1P2ld/EIXOULneTj33nbVXS0sSlpqlSNG5IOIfWemtRTR4TrOuNGw+2OO
AE4TRgECgYEA2A06RfFT3lGukA7FC0QmMghXfUYlAfXdfqhon4TcLch0QU+fXYFo
q8xDizxBZLMlZGG1XOVFp4LxorZOWMsad7K6B/XR8bmg9W6RGNyS/JlpdNIBi1C9
+5ACRupmNSWsXmJ72zIpTDtJCXN8L+N13pWvUwnB4DWTk6xnzPtaz1ECgYEA1XXz
c6wl3RA0HxF54CVe+FZM0eI+GIGaozZKYh2tK45qN801wQ/ez/mHdvZe2gLFjUCp
tO76gBtJ8HxFEFA7bqnif2s1OAWh4fsqtr0iEDam5jH5IVAW5wmHgi6V08mFKbwc
dy9CpNr9T7oe5v8UY2uL/vn7Kv4CS1Bv6hbU2eMCgYEA0AIEPby3646my0l9CnjF
cVw4p4L2NGn7o2sOt65ZsbaRvyOioorqNKVHznDn4MTd1kSAMX0Hz9wxOl/dFH4O
8HlhxDI2vEzlHAckqVQMLCijsHZUSEYnc2DV4GLinn6z8ndNGd+0hRF7Ix9NzGlp
XTCuCPuW7n+GoyHVGjRR3NECgYEAjhdS9FfOaIYFu/ydHTijLDn+LuQkI5n6PtS/
1OoeQNUvHXALbTVMQzK+GtFLOGIJ8MnvbdJ6i1Ye9Ocz7fUKatLJQ7owldch+FSC
DVx+1T4cATWYubUfWbG9M0ohT/ZgHvTqGegqu6ROZIjnUyrO/pMzgIoUyHyHOG0V
4kRKcbMCgYB7NbQWYAkGTilFj6zuuY/zL7lqGjneBNW/9z0HjZ8A7e+c3UL/MtTM
Nynp/T85WmdTuPDq0wm8HbYllfgGsqFUOoksP5ylf7wZJ8vQFCME76FJLRQwjK5y
CdJ7ah1QDXwy5wCeOOAdFv8dPtfhGKp2kr12eBYyFAdBjgdoliZqmA==
-----END RSA PRIVATE KEY-----`
	fuzzCertKeyPEM = `-----BEGIN RSA PRIVATE KEY-----
MIIEpAIBAAKCAQEAk+iORvofe/ZVpU7tC4liuZN9+9iku1kk9OLBMrJ/lxyqAZRx
17q9LUIXrtN74sC7j4HEdOaACQ0BWXsVr1FtPhGtMoKGD5Lz+U0CPz35y5VMMRVT
4OQsJTZSZz+MjqTLacbGjJRwy9zHg1h9x0FBpfuGvqie5WBejnIOomsfSypSV2Iw
LgJh52OokBtPm94lQZ9ueXcrByr58EnMZ1jPWQ3hzVmK+WhUL121FlTLu9XIRcWh
EMRoIS1kirKSqBk5nlcC/E7zDnOJl3ENVTIMnNvflrO1MdgNrQl+zmQvIvrytVa5
r2J3xYwvQ9rRozYzU2h3B2w6DCjyjbWaZKooWwIDAQABAoIBAAHZy0WGNAnfqn92
39zLl+i2OLNKxYZBD3jvbMVX6FZAj0p4/f2vV482I+TyTNealJAEo52fhdvXIlHp
QxfskNunIxUP4n6O1ss/hijXNEzPA2McSbWR+OZUTbzici9Oh5Yu+UjvmJHzlQCj
PhurHjQe4lOVMjvNULw/dI+I8YDM+vSlMa/GvADHDT/UAkTpzE8KA9mLqhAmMVIB
36aVb0bdIAeC0vxC+meZ9SJetPMUk5VGWkAHqivZoK4DgQ23NfGcSBkWeq3Yt71Q
oElilmxt0sCjGtxZlKxBwepYX7oar7x8Mwl3FOfqpPoYgd2Zso1OX7UjwuJGGfHq
F5JjgJUCgYEAw//AQCIvbZxtcbhqbxozLrxzDiqnkldBZGwMxhYVVJt3dBiabH1g
U9Epmc3/UGJCk2DcEAU3NrvQ5Hfv0IVldjtU6OXuW6JZP1Kw1n2czldvcmvFis31
3LFIlvHlgEjLpkrxA9hZ79RFX6wQf6uemG7/1RM1NX29P6Od0g69Ln0CgYEAwS/9
5AT2qbtGeB/YCrEQBUuUicptayIfem8JZbMsP6nzhkGDbPO+d5xnYrheBNedpemz
qCFymGih7q1wB1FKKflwvLgB3hALKFFvkn8RoosQurh582jcptzIiO2pKw1kFp23
zh7vXzRPFQLn1SsDCDQ6HUsLL0dNOnHt1YooMbcCgYAOn9SedG6JhTR9Wb9HTvMm
t5T2J6SdPLl6Xr2NQjSRPZBqLzPGiIxZdK/f9Ajq3IoPKRkCcQEvqk/p3DEeo/Vw
Hvk074Mbfz+dg/QB7Rl4I/oC1ZvFwZxovSmnaaEwMz5OyCS3nrsHNBWBD/ujKxEI
Wq/oHCjKNvmZ+AFcnRDsmQKBgQCZAauypwO91qeviHkRrr8jkoLoxzz2NyZ7T+o/
dDM9kRthYA35gut9zJBNrfw5FZS0zW4PYb5jW6u1YAR0pzt4FynlLk+8UzSjECyv
+Jg9BquPV4Cu+oSYXBEv8hukD40QJIZpaDLqUoG4AH8hZFmYa9UDUmZfYbeW7JkU
IcJH7QKBgQCuakOy3d5BQsR0BbSSr8WdW7cibADCMM/uScpCXMPkSU98vxMUjkx/
kxcpRjgGX77fgdR0Chz/u9+zDOXPfKzN39FdGjDwxcfbyfYxdMSFYzYoIVEynYmu
HxroYnTOzOx+bvUYNHkD9G1aUlu0F+03yuQcJ1PyxkiE4BBD+giXmQ==
-----END RSA PRIVATE KEY-----`
)

func fixedKey(t testing.TB, p string) *rsa.PrivateKey {
	t.Helper()
	b, _ := pem.Decode([]byte(p))
	if b == nil {
		t.Fatal("bad fixture PEM")
	}
	k, err := x509.ParsePKCS1PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// fixedState is an emulator state whose signing key is the fixture key.
func fixedState(t testing.TB) *State {
	k := fixedKey(t, fuzzSigningKeyPEM)
	return &State{Keys: []*signingKey{{Kid: "fuzz-key", KeyDER: x509.MarshalPKCS1PrivateKey(k), key: k}}}
}

// fixedCert is a self-signed certificate over the fixture key.
func fixedCert(t testing.TB) (*x509.Certificate, *rsa.PrivateKey, string) {
	t.Helper()
	key := fixedKey(t, fuzzCertKeyPEM)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(9), Subject: pkix.Name{CommonName: "fuzz-app"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}
