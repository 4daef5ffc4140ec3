#!/usr/bin/env bash
# make demo: the whole product end to end on temporary paths, against the bundled Entra emulator.
#   emulator up → daemon up → the user signs in (device code, the page filled in as a person would) →
#   the demo agent asks for a token → the user approves the consent request in the terminal → the agent prints the
#   OBO token's claims (user oid + agent azp) → a second call comes from the cache → everything stops, nothing is left.
set -euo pipefail
BIN=${1:?usage: demo.sh BIN_DIR}
BIN=$(cd "$BIN" && pwd)
WORK=$(mktemp -d /tmp/agentidd-demo.XXXXXX)
chmod 700 "$WORK"
PIDS=()
INTERRUPTED=
cleanup() {
	local rc=$?
	if [ -n "$INTERRUPTED" ]; then
		echo "demo interrupted; stopping what it started" >&2
	elif [ $rc -ne 0 ] && [ -d "$WORK" ]; then
		echo "demo failed (exit $rc); daemon log:" >&2
		tail -20 "$WORK/daemon.log" >&2 2>/dev/null || true
		cat "$WORK/agent.out" >&2 2>/dev/null || true
	fi
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'INTERRUPTED=1; exit 130' INT TERM
# Bold headings on a terminal only: escape codes in a log or a pipe are noise.
if [ -t 1 ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD='' PLAIN=''; fi
say() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$PLAIN"; }
json_field() { sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p" "$2"; }
wait_for() { # wait_for SECONDS CMD...: poll until CMD succeeds
	local deadline=$((SECONDS + $1)); shift
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $deadline ] || { echo "timed out waiting for: $*" >&2; return 1; }
		sleep 0.1
	done
}

# The demo directory's user and secret are the emulator's built-in demo values (docs/emulator.md); never real ones.
USER_UPN=ada@contoso.example
export SIGNIN_PASSWORD=correct-horse-battery
BLUEPRINT=a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d
AGENT_ID=c7d8e9f0-a1b2-4c3d-9e4f-5a6b7c8d9e0f

say "1. Start the Entra emulator (local HTTPS identity provider with its own CA)"
"$BIN/entra-emulator" --state-dir "$WORK/emulator" >"$WORK/emulator.json" 2>"$WORK/emulator.log" &
PIDS+=($!)
wait_for 20 grep -q authority "$WORK/emulator.json"
AUTHORITY=$(json_field authority "$WORK/emulator.json")
CA=$(json_field ca_file "$WORK/emulator.json")
echo "authority: $AUTHORITY"

say "2. Configure agentidd: one agent, bound to the demo agent binary by path and SHA-256"
AGENT_BIN="$BIN/demo-agent"
AGENT_SHA=$(sha256sum "$AGENT_BIN" | cut -d' ' -f1)
export AGENTIDD_CONFIG="$WORK/config/config.toml"
export AGENTIDD_SOCKET="$WORK/run/agentidd.sock"
mkdir -p "$WORK/config" && chmod 700 "$WORK/config"
cat >"$AGENTIDD_CONFIG" <<TOML
authority = "$AUTHORITY"
client_id = "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a"
blueprint_app_id = "$BLUEPRINT"
dev_ca_file = "$CA"
# The demo runs on machines without a desktop keyring; real installs keep the default "os".
secret_store = "file"
state_dir = "$WORK/state"

[[agent]]
name = "demo-agent"
app_id = "$AGENT_ID"
display_name = "Demo agent"
[[agent.binding]]
exe = "$AGENT_BIN"
sha256 = "$AGENT_SHA"
TOML
sed 's/^/    /' "$AGENTIDD_CONFIG"
printf '%s' 'blueprint-demo-secret-do-not-use' | "$BIN/agentidd" secret set --blueprint "$BLUEPRINT"

say "3. Start the daemon"
"$BIN/agentidd" run 2>"$WORK/daemon.log" &
PIDS+=($!)
wait_for 20 test -S "$AGENTIDD_SOCKET"
"$BIN/agentidd" status

say "4. The user signs in with the device code (the daemon keeps the sign-in; agents never see it)"
"$BIN/agentidd" login >"$WORK/login.out" 2>&1 &
LOGIN=$!
wait_for 20 grep -q "enter the code" "$WORK/login.out"
cat "$WORK/login.out"
URL=$(grep -o 'https://[^ ]*' "$WORK/login.out" | head -1)
CODE=$(sed -n 's/.*enter the code \([A-Z0-9-]*\).*/\1/p' "$WORK/login.out" | head -1)
"$BIN/signin-bot" -url "$URL" -code "$CODE" -user "$USER_UPN" -ca "$CA"
wait "$LOGIN"
tail -1 "$WORK/login.out"

say "5. The agent asks for a token; agentidd asks the user first"
"$BIN/demo-agent" >"$WORK/agent.out" 2>&1 &
AGENT=$!
wait_for 20 sh -c "'$BIN/agentidd' consent list | grep -q '^request '"
"$BIN/agentidd" consent list
REQ=$(("$BIN/agentidd" consent list | sed -n 's/^request \([^:]*\):.*/\1/p') | head -1)

say "6. The user approves it in the terminal: agentidd consent approve $REQ --for 1h"
"$BIN/agentidd" consent approve "$REQ" --for 1h
wait "$AGENT"
cat "$WORK/agent.out"

say "7. The same request again is served from the daemon's cache"
"$BIN/demo-agent" >"$WORK/agent2.out" 2>&1
head -1 "$WORK/agent2.out"

say "8. Audit: one two-principal record per decision, hash-chained"
# One line per record here (the user the data belongs to, the agent that acted); the full JSON of the last one below.
"$BIN/agentidd" audit tail -n 3 >"$WORK/audit.out"
while IFS= read -r rec; do
	field() { printf '%s' "$rec" | sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }
	printf '  #%s %-16s %s  user %s  agent %s%s\n' "$(printf '%s' "$rec" | sed -n 's/^{"seq":\([0-9]*\).*/\1/p')" \
		"$(field event)" "$(field outcome)" "$(field upn)" "$(field name)" \
		"$(src=$(field source); [ -n "$src" ] && printf '  via %s' "$src")"
done <"$WORK/audit.out"
echo "  last record in full:"
tail -1 "$WORK/audit.out" | sed 's/^/    /'
"$BIN/agentidd" audit verify

say "9. Stop everything"
cleanup
trap - EXIT
PIDS=()
echo "demo finished; no process or socket left behind"
