#!/usr/bin/env bash
# Portcullis proxy benchmark (issue 5): a small GET with a valid token, at
# 1, 16 and 64 connections, (a) straight to the app in its pod, (b) through
# Portcullis (captured), (c) with the token cache disabled when the agent
# can be told so, (d) through HAProxy's jwt_verify. The servers share CPU 0,
# wrk gets CPU 1; targets alternate round by round; medians are reported
# with the ratio to direct, then a CPU profile of the agent under load.
#
#   sudo tools/bench/run.sh                 # 3 rounds of 5 s
#   sudo ROUNDS=5 DURATION=10s tools/bench/run.sh
#
# The measurement itself is BenchmarkProxies in test/e2e (so `make bench`
# runs it too); this script adds the perf profile summary. Needs root, wrk,
# haproxy, taskset and perf.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-/tmp/portcullis-bench}
[ "$(id -u)" = 0 ] || { echo "bench: run as root" >&2; exit 1; }
for b in wrk haproxy taskset perf; do
	command -v "$b" >/dev/null || { echo "bench: $b not installed" >&2; exit 1; }
done
mkdir -p "$OUT"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
cd "$ROOT"
PORTCULLIS_BENCH_ROUNDS=${ROUNDS:-3} \
PORTCULLIS_BENCH_DURATION=${DURATION:-5s} \
PORTCULLIS_BENCH_OUT="$OUT/table.txt" \
PORTCULLIS_BENCH_PERF="$OUT/agent.perf" \
	go test -count=1 -run '^$' -bench Proxies -benchtime 1x -timeout 30m ./test/e2e/
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "== where the agent's CPU goes (perf, 16 connections through Portcullis)"
echo "-- kernel vs agent binary (self time)"
perf report -i "$OUT/agent.perf" --stdio --sort dso 2>/dev/null |
	grep -E '^ +[0-9.]+%' | awk '{printf "  %8s  %s\n", $2, $3}' | tee "$OUT/profile.txt"
echo "-- agent functions, inclusive of what they call (children %, self %)"
perf report -i "$OUT/agent.perf" --stdio --children --sort symbol 2>/dev/null |
	grep -E '^ +[0-9.]+%' | grep -v '\[k\]' | grep -vE 'runtime\.(goexit|mstart)|gowrap' |
	awk '{printf "  %8s %8s  %s\n", $1, $2, $4}' | head -40 | tee -a "$OUT/profile.txt"
echo
echo "table: $OUT/table.txt, profile: $OUT/profile.txt (perf report -i $OUT/agent.perf)"
