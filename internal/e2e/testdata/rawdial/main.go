// Command rawdial asks a daemon for a token over a plain Unix-socket gRPC connection, without the client library's
// check that the daemon runs as the same user: the other-uid test uses it to prove that the daemon itself refuses a
// peer of another uid. It prints the gRPC status code name and exits 0 when it got an answer.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

func main() {
	socket, agent, scope := os.Args[1], os.Args[2], os.Args[3]
	cc, err := grpc.NewClient("passthrough:///agentidd",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "agentidd-client", "1")
	_, err = agentidv1.NewAgentIdentityClient(cc).GetToken(ctx, &agentidv1.GetTokenRequest{Agent: agent, Scopes: []string{scope}})
	fmt.Println(status.Code(err).String())
}
