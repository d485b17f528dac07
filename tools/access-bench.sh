#!/usr/bin/env bash
# What source ACLs and per-client limits cost: one ringlb binary run twice side by side, "off"
# (no [service.access], no [service.limits]) and "on" (an ACL of 10,000 prefixes, IPv4 and IPv6,
# allow and deny, whose allow list admits the load's client, and per-client limits set high
# enough never to refuse it), in interleaved rounds (off on off on ...) of `ringlb bench rr`
# (50 connections, 64 B) and `ringlb bench connect` (a connection per request) to one echo
# backend. Prints each round and the medians of the rates and of each process's CPU time per
# request or connection (steadier than rates on a shared machine), and the refusals each
# counted (must be 0: the bench measures admitted clients). The load comes from 127.0.0.1, one
# client: every connection takes the same shard lock of the client table, the worst case for
# contention between workers.
#
# Usage: tools/access-bench.sh BIN [rounds]      (default 4 rounds; every run is bounded in time)
# Environment: WORKERS (2), DURATION seconds per bench run (4), PREFIXES in the ACL (10000).
# Needs jq (installed with apt-get when absent). Use a release build: cargo build --release.
set -euo pipefail

BIN=${1:?usage: tools/access-bench.sh BIN [rounds]}
ROUNDS=${2:-4}
WORKERS=${WORKERS:-2}
DURATION=${DURATION:-4}
PREFIXES=${PREFIXES:-10000}

source "$(dirname "$0")/lib.sh"
need jq || apt_install jq

# Ports below the ephemeral range, apart from ab.sh's (23xxx-25xxx) and compare.sh's
# (26xxx-29xxx): backend 21000; "off" 21100 (admin 21190), "on" 21200 (admin 21290).
"$BIN" bench serve --listen 127.0.0.1:21000 --threads 1 >"$work/echo.log" 2>&1 &
pids+=($!)

# The ACL: half the prefixes allowed (127.0.0.0/8, the client's, among them), half denied;
# /24s of 10.0.0.0/8 and /48s of 2001:db8::/32 allowed, /24s of 172.16.0.0/12 and /64s of
# 2001:db9::/32 denied.
half=$(( PREFIXES / 2 ))
{
  printf 'allow = ["127.0.0.0/8"'
  awk -v n=$(( half - 1 )) 'BEGIN {
    for (i = 0; i < n; i++) {
      if (i % 4 == 3) printf ", \"2001:db8:%x::/48\"", i
      else printf ", \"10.%d.%d.0/24\"", int(i / 256) % 256, i % 256
    }
  }'
  printf ']\ndeny = ['
  awk -v n="$half" 'BEGIN {
    for (i = 0; i < n; i++) {
      if (i > 0) printf ", "
      if (i % 4 == 3) printf "\"2001:db9:0:%x::/64\"", i
      else printf "\"172.%d.%d.0/24\"", 16 + int(i / 256) % 16, i % 256
    }
  }'
  printf ']\n'
} >"$work/acl.toml"

declare -A BASE=([off]=21100 [on]=21200) PID=()
for v in off on; do
  {
    cat <<EOF
[runtime]
workers = $WORKERS
[admin]
listen = "127.0.0.1:$(( ${BASE[$v]} + 90 ))"
[[service]]
name = "echo"
listen = "127.0.0.1:${BASE[$v]}"
EOF
    if [ "$v" = on ]; then
      echo '[service.access]'
      cat "$work/acl.toml"
      cat <<EOF
[service.limits]
max_connections_per_client = 1000000
connection_rate_per_client = "1000000/s"
rate_burst = 1000000
EOF
    fi
    cat <<EOF
[[service.backend]]
address = "127.0.0.1:21000"
EOF
  } >"$work/$v.toml"
  "$BIN" check -c "$work/$v.toml" | grep -E 'access|per client' || true
  start_variant "$BIN" "$v"
done

wait_listening 21000 21100 21200

results=$work/results
for r in $(seq "$ROUNDS"); do
  for v in off on; do
    bench_round "$BIN" "${BASE[$v]}" "${PID[$v]}"
    echo "round $r $v rr $rr connect $cn rr_cpu_us $rr_cpu connect_cpu_us $cn_cpu" \
      | tee -a "$results"
  done
done

echo
echo "Rates depend on what else takes the CPUs; the process's CPU time per unit much less so."
echo
echo "| workload | off | on ($PREFIXES prefixes, limits) | on / off |"
echo "|---|---|---|---|"
median_rows "$results" "ringlb's" 3 off on rr connect rr_cpu_us connect_cpu_us

# Every client was admitted: a refusal would make "on" cheaper and the comparison void.
# refused PORT: the sum of ringlb_service_refused_total from the admin API at PORT.
refused() {
  local sum
  exec 3<>"/dev/tcp/127.0.0.1/$1"
  printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
  sum=$(awk '/^ringlb_service_refused_total/ { s += $2 } END { print s + 0 }' <&3)
  exec 3<&-
  echo "$sum"
}
echo
for v in off on; do
  n=$(refused $(( ${BASE[$v]} + 90 )))
  echo "$v: clients refused: $n"
  if [ "$n" != 0 ]; then
    echo "WARNING: the '$v' process refused clients; its figures are not comparable" >&2
  fi
done
