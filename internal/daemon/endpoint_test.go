package daemon

import (
	"testing"

	"github.com/agentidd/agentidd/internal/config"
	"github.com/agentidd/agentidd/ipc"
)

// The daemon looks for its endpoint in the order the CLI and the clients do: environment (or run --socket), config,
// default.
func TestListenEndpointOrder(t *testing.T) {
	t.Setenv(ipc.EnvSocket, "/run/env.sock")
	if got, _ := listenEndpoint(&config.Config{Socket: "/run/config.sock"}); got != "/run/env.sock" {
		t.Errorf("with both: %q, want the environment's", got)
	}
	t.Setenv(ipc.EnvSocket, "")
	if got, _ := listenEndpoint(&config.Config{Socket: "/run/config.sock"}); got != "/run/config.sock" {
		t.Errorf("config only: %q, want the config's", got)
	}
	def, err := ipc.DefaultPath()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := listenEndpoint(&config.Config{}); got != def {
		t.Errorf("neither: %q, want the default %q", got, def)
	}
}
