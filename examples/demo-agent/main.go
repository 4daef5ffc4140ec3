// Command demo-agent is the smallest real agent: it asks agentidd for an on-behalf-of token for itself, waits for the
// user's consent the first time, and prints the token's decoded claims so you can see both principals: the user (oid,
// sub) whose data it may touch and the agent identity (azp) that acts.
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/status"

	"github.com/agentidd/agentidd/client"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

func main() {
	agent := flag.String("agent", "demo-agent", "agent name in the agentidd config")
	scope := flag.String("scope", "api://files.contoso.example/Files.Read", "scope to ask for")
	wait := flag.Duration("consent-wait", 2*time.Minute, "how long to wait for the user's consent")
	task := flag.String("task", "", "bind the consent to this task id: the grant ends at EndTask or when this process exits")
	parentAgent := flag.String("parent-agent", "", "the agent that delegated this work (with -parent-grant)")
	parentGrant := flag.String("parent-grant", "", "the delegating agent's grant id (with -parent-agent)")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *wait+30*time.Second)
	defer cancel()
	conn, err := client.Dial("")
	if err != nil {
		fail(err)
	}
	defer conn.Close()
	opts := []client.Option{client.WithConsentWait(*wait), client.WithJustification("summarise the files you shared with me this week")}
	if *task != "" {
		opts = append(opts, client.WithTask(*task))
	}
	if *parentAgent != "" || *parentGrant != "" {
		opts = append(opts, func(r *agentidv1.GetTokenRequest) { r.ParentAgent, r.ParentGrantId = *parentAgent, *parentGrant })
	}
	tok, err := conn.Token(ctx, *agent, []string{*scope}, opts...)
	if err != nil {
		fail(err)
	}
	claims, err := decodeClaims(tok.AccessToken)
	if err != nil {
		fail(err)
	}
	source := "identity provider"
	if tok.FromCache {
		source = "agentidd cache"
	}
	fmt.Printf("got a token for %s from the %s, valid until %s, grant %s\n", strings.Join(tok.Scopes, " "), source, tok.ExpiresAt.Local().Format(time.RFC3339), tok.GrantID)
	out := map[string]any{}
	for _, k := range []string{"iss", "aud", "tid", "oid", "sub", "azp", "idtyp", "scp", "roles", "xms_act_fct", "xms_par_app_azp", "exp"} {
		if v, ok := claims[k]; ok {
			out[k] = v
		}
	}
	b, _ := json.MarshalIndent(out, "", "  ")
	fmt.Println(string(b))
	fmt.Printf("user (oid): %v   agent (azp): %v\n", claims["oid"], claims["azp"])
}

// decodeClaims reads a JWT's payload for display. It does not verify the signature: the resource server does that.
func decodeClaims(jwt string) (map[string]any, error) {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return nil, errors.New("token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, fmt.Errorf("decoding token payload: %w", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		return nil, fmt.Errorf("parsing token payload: %w", err)
	}
	return claims, nil
}

// fail prints the daemon's own words (code, reason, message), not gRPC's "rpc error: code = ... desc = ..." wrapping.
func fail(err error) {
	msg := err.Error()
	if st, ok := status.FromError(err); ok {
		msg = st.Code().String() + ": " + st.Message()
	}
	if r := client.Reason(err); r != "" {
		msg = r + " (" + msg + ")"
	}
	fmt.Fprintln(os.Stderr, "demo-agent:", msg)
	os.Exit(1)
}
