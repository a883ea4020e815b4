#!/usr/bin/env bash
# Portcullis demo: network-namespace "pods" on this machine, a local
# Entra-shaped token issuer, the agent, a sample app, and a scripted set of
# requests with the verdict for each.
#
#   tools/demo/demo.sh        # set up, run the requests, tear down
#   tools/demo/demo.sh down   # remove anything a crashed run left behind
#
# Needs root, Linux with cgroup v2, iproute2 and curl. Only loopback and
# addresses inside the namespaces it creates are used.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$ROOT/bin}
WORK=${DEMO_DIR:-/tmp/portcullis-demo}
PREFIX=pcdemo
BRIDGE=${PREFIX}-br
NET=198.18.77
IDP=http://127.0.0.1:8400
ADMIN=127.0.0.1:9901
SOCKET=$WORK/debug.sock
PODS=(frontend orders-api attacker)
declare -A IP=([frontend]=$NET.10 [orders-api]=$NET.20 [attacker]=$NET.30)
declare -A SA=([frontend]=frontend [orders-api]=orders [attacker]=attacker)
FRONTEND_CLIENT=aaaaaaaa-0000-4000-8000-00000000f00d

cgroot() {
	local m
	m=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
	[ -n "$m" ] || { echo "demo: no cgroup v2 hierarchy mounted" >&2; exit 1; }
	echo "$m"
}
CG=$(cgroot)/$PREFIX

down() {
	for f in "$WORK"/*.pid; do
		[ -e "$f" ] || continue
		kill "$(cat "$f")" 2>/dev/null || true
	done
	# Give the agent its drain; it tears the datapath down on exit.
	for _ in $(seq 1 50); do
		alive=0
		for f in "$WORK"/*.pid; do
			if [ -e "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then alive=1; fi
		done
		[ $alive = 0 ] && break
		sleep 0.1
	done
	for f in "$WORK"/*.pid; do
		[ -e "$f" ] || continue
		kill -9 "$(cat "$f")" 2>/dev/null || true
		rm -f "$f"
	done
	for p in "${PODS[@]}"; do
		ip netns del "$PREFIX-$p" 2>/dev/null || true
		ip link del "$PREFIX-${p:0:6}" 2>/dev/null || true
		if [ -d "$CG/$p" ]; then
			while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done < "$CG/$p/cgroup.procs"
			rmdir "$CG/$p" 2>/dev/null || true
		fi
	done
	rmdir "$CG" 2>/dev/null || true
	ip link del "$BRIDGE" 2>/dev/null || true
	rm -rf /sys/fs/bpf/portcullis/demo 2>/dev/null || true
	rm -rf "$WORK"
}

if [ "${1:-}" = down ]; then down; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "demo: run as root (sudo make demo)" >&2; exit 1; }
for b in portcullis-agent portcullis devidp demoapp; do
	[ -x "$BIN/$b" ] || { echo "demo: $BIN/$b missing; run 'make build'" >&2; exit 1; }
done

down
trap down EXIT
mkdir -p "$WORK/policies" "$CG"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Creating pods (network namespaces with a veth to bridge $BRIDGE, each in its own cgroup)"
ip link add "$BRIDGE" type bridge
ip addr add "$NET.1/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
for p in "${PODS[@]}"; do
	ns=$PREFIX-$p host=$PREFIX-${p:0:6}
	ip netns add "$ns"
	ip link add "$host" type veth peer name eth0 netns "$ns"
	ip link set "$host" master "$BRIDGE" up
	ip -n "$ns" addr add "${IP[$p]}/24" dev eth0
	ip -n "$ns" link set eth0 up
	ip -n "$ns" link set lo up
	mkdir -p "$CG/$p"
	printf '  %-11s %-15s netns %-22s cgroup %s\n' "$p" "${IP[$p]}" "$ns" "$CG/$p"
done

# run POD CMD...: run a command inside a pod: its netns and its cgroup.
# The shell joins the cgroup first: `ip netns exec` remounts /sys, so the
# cgroup tree is not reachable from inside.
run() {
	local p=$1; shift
	sh -c 'echo $$ > "$0/cgroup.procs"; ns=$1; shift; exec ip netns exec "$ns" "$@"' "$CG/$p" "$PREFIX-$p" "$@"
}

cat > "$WORK/workloads.yaml" <<YAML
workloads:
YAML
for p in "${PODS[@]}"; do
	cat >> "$WORK/workloads.yaml" <<YAML
- namespace: shop
  name: $p
  serviceAccount: ${SA[$p]}
  labels: {app: $p}
  ips: [${IP[$p]}]
  netns: /run/netns/$PREFIX-$p
  cgroup: $CG/$p
YAML
	[ "$p" = frontend ] && echo "  clientID: $FRONTEND_CLIENT" >> "$WORK/workloads.yaml"
done
cp "$ROOT/tools/demo/policies.yaml" "$WORK/policies/"
cat > "$WORK/agent.yaml" <<YAML
mode: local
nodeName: demo-node
adminAddress: $ADMIN
debugSocket: $SOCKET
pinDir: /sys/fs/bpf/portcullis/demo
teardownOnExit: true
shutdownGrace: 2s
local:
  workloads: workloads.yaml
  policies: policies
audit:
  path: audit.log
log:
  format: text
YAML

say "Starting devidp (a local Entra ID look-alike on $IDP), the app, and the agent"
"$BIN/devidp" serve --listen 127.0.0.1:8400 >"$WORK/devidp.log" 2>&1 &
echo $! > "$WORK/devidp.pid"
run orders-api "$BIN/demoapp" -listen :8080 -name orders-api >"$WORK/app.log" 2>&1 &
echo $! > "$WORK/app.pid"
"$BIN/portcullis-agent" --config "$WORK/agent.yaml" >"$WORK/agent.log" 2>&1 &
echo $! > "$WORK/agent.pid"

wait_for() { # URL what
	for _ in $(seq 1 100); do
		curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "demo: $2 did not come up; its log:" >&2
	cat "$WORK"/*.log >&2
	exit 1
}
wait_for "$IDP/$(echo 72f988bf-0000-4000-8000-000000000001)/v2.0/.well-known/openid-configuration" devidp
wait_for "http://$ADMIN/readyz" "the agent"
echo "  devidp, orders-api app and portcullis-agent are up (agent ready: $(curl -s "http://$ADMIN/readyz"))"

mint() { "$BIN/devidp" mint --url "$IDP" "$@"; }
TOK_NOROLE=$(mint --aud api://orders --roles Orders.Audit)
TOK_READ=$(mint --aud api://orders --roles Orders.Read)
TOK_WRONGAUD=$(mint --aud api://payments --roles Orders.Read)
TOK_EXPIRED=$(mint --aud api://orders --roles Orders.Read --lifetime 1s --claim exp=1000000000 --claim iat=999996400 --claim nbf=999996400)
TOK_FRONTEND=$(mint --app --aud api://orders --roles Orders.Write --client-id $FRONTEND_CLIENT)

ORDERS=http://${IP[orders-api]}:8080
printf '\n%-3s %-10s %-42s %-9s %-5s %-5s %s\n' "#" "FROM" "REQUEST" "EXPECTED" "GOT" "" "WHY"
printf '%s\n' "------------------------------------------------------------------------------------------------------------"
n=0 fails=0
req() { # FROM EXPECTED DESCRIPTION -- curl args...
	local from=$1 want=$2 desc=$3; shift 4
	local out code why
	if [ "$from" = host ]; then
		out=$(curl -s -m 5 -o "$WORK/body" -w '%{http_code}' -D "$WORK/headers" "$@" || true)
	else
		out=$(run "$from" curl -s -m 5 -o "$WORK/body" -w '%{http_code}' -D "$WORK/headers" "$@" || true)
	fi
	code=${out:-000}
	why=$(grep -i '^www-authenticate:' "$WORK/headers" 2>/dev/null | sed -n 's/.*error_description="\([^"]*\)".*/\1/p' | tr -d '\r' || true)
	[ -n "$why" ] || why=$(sed -n 's/.*"reason":"\([^"]*\)".*/\1/p' "$WORK/body" 2>/dev/null || true)
	if [ "$code" = 200 ]; then
		why="forwarded; the app saw X-Portcullis-Source: $(sed -n 's/.*"X-Portcullis-Source":"\([^"]*\)".*/\1/p' "$WORK/body" || true)"
	fi
	n=$((n+1))
	local mark=ok
	[ "$code" = "$want" ] || { mark=FAIL; fails=$((fails+1)); }
	printf '%-3s %-10s %-42s %-9s %-5s %-5s %s\n' "$n" "$from" "$desc" "$want" "$code" "$mark" "$why"
}
req host       401 "GET /orders/42, no token"                 -- "$ORDERS/orders/42"
req host       401 "GET /orders/42, expired token"            -- -H "Authorization: Bearer $TOK_EXPIRED" "$ORDERS/orders/42"
req host       401 "GET /orders/42, token for api://payments" -- -H "Authorization: Bearer $TOK_WRONGAUD" "$ORDERS/orders/42"
req host       403 "GET /orders/42, token without the role"   -- -H "Authorization: Bearer $TOK_NOROLE" "$ORDERS/orders/42"
req host       200 "GET /orders/42, token with Orders.Read"   -- -H "Authorization: Bearer $TOK_READ" "$ORDERS/orders/42"
req frontend   200 "GET /internal/stock, no token"            -- "$ORDERS/internal/stock"
req attacker   403 "GET /internal/stock, no token"            -- "$ORDERS/internal/stock"
req frontend   200 "POST /orders, frontend's own app token"   -- -X POST -H "Authorization: Bearer $TOK_FRONTEND" -d '{"sku":"42"}' "$ORDERS/orders"
req attacker   403 "POST /orders, frontend's token replayed"  -- -X POST -H "Authorization: Bearer $TOK_FRONTEND" -d '{"sku":"42"}' "$ORDERS/orders"
req attacker   403 "GET /internal/stock, forged identity hdr" -- -H "X-Portcullis-Source: spiffe://cluster.local/ns/shop/sa/frontend" "$ORDERS/internal/stock"

say "Audit log: one JSON record per decision ($WORK/audit.log)"
sleep 0.3 # the audit writer is asynchronous; it flushes within milliseconds
cut -c1-230 "$WORK/audit.log"

say "Metrics (http://$ADMIN/metrics), excerpt"
curl -s "http://$ADMIN/metrics" | grep -E '^portcullis_(verifier_requests_total|agent_enrolled_pods|datapath_events_total\{event="capture_assigned"|tokencheck_verified_cache_total)' | head -20

say "Debugging the node with the CLI (bin/portcullis --socket $SOCKET ...)"
pc() { echo "\$ portcullis $*"; "$BIN/portcullis" --socket "$SOCKET" --color never "$@" || true; echo; }
pc workloads
pc explain --workload shop/orders-api --port 8080 --method POST --path /orders --source shop/attacker --token "$TOK_FRONTEND"

echo
if [ $fails = 0 ]; then
	echo "All $n requests got the expected answer. Tearing down."
else
	echo "$fails of $n requests did not get the expected answer; logs in $WORK were:"
	tail -n 20 "$WORK/agent.log"
	exit 1
fi
