// Command signin-bot plays the person at the browser for `make demo`: it opens the device-code page the daemon printed,
// types the code, the user name and the password into the form, and submits it, exactly as a person would.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

func main() {
	page := flag.String("url", "", "verification URL shown by `agentidd login`")
	code := flag.String("code", "", "the user code shown by `agentidd login`")
	user := flag.String("user", "", "user name")
	caFile := flag.String("ca", "", "CA certificate of the local emulator")
	flag.Parse()
	password := os.Getenv("SIGNIN_PASSWORD") // never argv: argv is world-readable in /proc
	if *page == "" || *code == "" || *user == "" || *caFile == "" || password == "" {
		fmt.Fprintln(os.Stderr, "usage: SIGNIN_PASSWORD=... signin-bot -url URL -code CODE -user UPN -ca ca.pem")
		os.Exit(2)
	}
	pem, err := os.ReadFile(*caFile)
	if err != nil {
		fail(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}

	resp, err := hc.Get(*page)
	if err != nil {
		fail(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(strings.ToLower(string(body)), "<form") {
		fail(fmt.Errorf("sign-in page answered %s without a form", resp.Status))
	}
	resp, err = hc.PostForm(*page, url.Values{"user_code": {*code}, "username": {*user}, "password": {password}})
	if err != nil {
		fail(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "You are signed in") {
		fail(fmt.Errorf("sign-in was not accepted: %s", resp.Status))
	}
	fmt.Printf("(browser) entered code %s and signed in as %s\n", *code, *user)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "signin-bot:", err)
	os.Exit(1)
}
