// Package e2e holds agentidd's acceptance tests: the real entra-emulator binary, the real `agentidd run` binary, real
// Unix sockets and real processes. The test binary itself is bound to the test agent by path and SHA-256, so it can
// call the daemon as an attested agent through the public client package.
package e2e
