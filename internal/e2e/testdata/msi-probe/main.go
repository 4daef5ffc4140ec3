// Command msi-probe is run by the e2e tests inside `agentidd exec`. It gets a token the way an unmodified agent would
// and prints one JSON line: {"mode":..., "token":..., "error":...}. The token goes to stdout only because the test
// that started it verifies its claims; nothing else ever prints one.
//
//	msi-probe mi SCOPE       azidentity.ManagedIdentityCredential
//	msi-probe mi-id CLIENT_ID SCOPE  the same, asking for a user-assigned identity by client ID
//	msi-probe default SCOPE  azidentity.DefaultAzureCredential
//	msi-probe socket AGENT SCOPE  client.Token over AGENTIDD_SOCKET
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/agentidd/agentidd/client"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: msi-probe mi|default SCOPE | mi-id CLIENT_ID SCOPE | socket AGENT SCOPE")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	mode := os.Args[1]
	out := map[string]string{"mode": mode}
	var tok string
	var err error
	switch mode {
	case "mi", "default":
		tok, err = azureToken(ctx, mode, "", os.Args[2])
	case "mi-id":
		if len(os.Args) < 4 {
			err = fmt.Errorf("mi-id needs CLIENT_ID SCOPE")
			break
		}
		tok, err = azureToken(ctx, "mi", os.Args[2], os.Args[3])
	case "socket":
		if len(os.Args) < 4 {
			err = fmt.Errorf("socket needs AGENT SCOPE")
			break
		}
		var iss *client.Issued
		if iss, err = client.Token(ctx, os.Args[2], os.Args[3]); err == nil {
			tok = iss.AccessToken
		} else {
			out["reason"] = client.Reason(err)
		}
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	out["token"] = tok
	if err != nil {
		out["error"] = err.Error()
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
	if err != nil {
		os.Exit(1)
	}
}

func azureToken(ctx context.Context, mode, clientID, scope string) (string, error) {
	opts := policy.TokenRequestOptions{Scopes: []string{scope}}
	if mode == "mi" {
		var o *azidentity.ManagedIdentityCredentialOptions
		if clientID != "" {
			o = &azidentity.ManagedIdentityCredentialOptions{ID: azidentity.ClientID(clientID)}
		}
		c, err := azidentity.NewManagedIdentityCredential(o)
		if err != nil {
			return "", err
		}
		t, err := c.GetToken(ctx, opts)
		return t.Token, err
	}
	c, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		return "", err
	}
	t, err := c.GetToken(ctx, opts)
	return t.Token, err
}
