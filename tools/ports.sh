#!/usr/bin/env bash
# How many new connections per second ringlb sustains toward ONE backend before it runs out of
# local ports, with one source address and with four (`source` in the config), for each
# `tcp_tw_reuse` setting asked for. Each run has a network namespace of its own (a fresh one, so
# no TIME_WAIT socket of an earlier run is left) with an ephemeral range of $PORTS ports, so the
# limit is reached within a second or two: a `ringlb bench serve` echo backend, ringlb in front of
# it, and `ringlb bench connect` clients (a new connection per request, the client closing first,
# so ringlb's side toward the backend closes first and holds the TIME_WAIT). The clients reach
# ringlb through $CLIENT_IPS distinct loopback addresses, so their own TIME_WAIT sockets (each
# address has its own $PORTS ports) never limit the run before ringlb's do.
#
# Prints, per run: successful connections per second through ringlb (summed over the clients),
# failed ones, ringlb's local shortages (`ringlb_local_shortages_total{source="connect",
# reason="ports"}` from /metrics: connects that found every source address out of ports), and
# the TIME_WAIT sockets toward the backend (ringlb's) and in all at the end of the run.
#
# Usage: tools/ports.sh            (as root: it creates network namespaces; removed on exit)
# Environment: DURATION seconds per run (5), PORTS in the ephemeral range (1000), TW_REUSE the
# tcp_tw_reuse values to run (default "2 1 0": Linux's default, 2, reuses TIME_WAIT ports for
# loopback connects only, which is what these are; 1 for every connect; 0 never), CLIENTS
# concurrent connections per client process (8), CLIENT_IPS client processes, one per address
# (8), WORKERS (2). Needs target/release/ringlb (built with `cargo build --release --locked`
# when absent), iproute2, curl and jq.
set -euo pipefail

DURATION=${DURATION:-5}
PORTS=${PORTS:-1000}
TW_REUSE=${TW_REUSE:-2 1 0}
CLIENTS=${CLIENTS:-8}
CLIENT_IPS=${CLIENT_IPS:-8}
WORKERS=${WORKERS:-2}

cd "$(dirname "$0")/.."
source tools/lib.sh
if [[ $(id -u) != 0 ]]; then
  echo "tools/ports.sh creates network namespaces: run it as root" >&2
  exit 1
fi
if ! need jq || ! need curl || ! need ip; then
  apt_install jq curl iproute2
fi
if [[ ! -x target/release/ringlb ]]; then
  echo "building target/release/ringlb" >&2
  cargo build --release --locked >&2
fi
BIN=$PWD/target/release/ringlb

# Every namespace made here is deleted on exit, after lib.sh's cleanup has stopped the processes
# running in it.
namespaces=()
ports_cleanup() {
  cleanup
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
}
trap ports_cleanup EXIT

# Ports outside the ephemeral range (40000 and up), fixed: each namespace is private.
BACKEND=127.0.0.1:8000
LISTEN=0.0.0.0:7000
ADMIN=127.0.0.1:9090
LOW=40000
HIGH=$((LOW + PORTS - 1))

# run_once LABEL SOURCES TW: one measurement; SOURCES is the TOML list of source addresses.
run_once() {
  local label=$1 sources=$2 tw=$3
  local ns="ringlb-ports-$$-${#namespaces[@]}"
  ip netns add "$ns"
  namespaces+=("$ns")
  local in=(ip netns exec "$ns")
  ip -n "$ns" link set lo up
  "${in[@]}" sysctl -q -w "net.ipv4.ip_local_port_range=$LOW $HIGH" "net.ipv4.tcp_tw_reuse=$tw"

  "${in[@]}" "$BIN" bench serve --listen "$BACKEND" --threads 1 >"$work/serve-$ns.log" 2>&1 &
  local serve=$!
  pids+=("$serve")
  cat >"$work/$ns.toml" <<EOF
[runtime]
workers = $WORKERS

[admin]
listen = "$ADMIN"

[[service]]
name = "ports"
listen = "$LISTEN"
max_connections = 100000
retries = 0
source = $sources

[[service.backend]]
address = "$BACKEND"
EOF
  "${in[@]}" "$BIN" run --config "$work/$ns.toml" --log-level error >/dev/null 2>"$work/ringlb-$ns.log" &
  local ringlb=$!
  pids+=("$ringlb")
  local _ up=0
  for _ in $(seq 100); do
    if "${in[@]}" curl -sf -o /dev/null "http://$ADMIN/metrics"; then up=1; break; fi
    sleep 0.1
  done
  if [[ $up == 0 ]]; then
    echo "ringlb did not start:" >&2
    cat "$work/ringlb-$ns.log" >&2
    exit 1
  fi

  local i clients=()
  for i in $(seq 1 "$CLIENT_IPS"); do
    "${in[@]}" "$BIN" bench connect "127.0.0.$((9 + i)):7000" --connections "$CLIENTS" \
      --threads 1 --duration "${DURATION}s" --timeout 2s --json >"$work/client-$ns-$i.json" &
    clients+=($!)
  done
  for i in "${clients[@]}"; do wait "$i"; done

  local ok failed rate shortages tw_backend tw_all
  ok=$(jq -s 'map(.requests) | add' "$work"/client-"$ns"-*.json)
  failed=$(jq -s 'map(.errors_total) | add' "$work"/client-"$ns"-*.json)
  rate=$(jq -s 'map(.requests / .elapsed_s) | add | floor' "$work"/client-"$ns"-*.json)
  shortages=$("${in[@]}" curl -sf "http://$ADMIN/metrics" \
    | awk '/^ringlb_local_shortages_total\{/ && /source="connect"/ && /reason="ports"/ {s += $NF}
           END {print s + 0}')
  tw_backend=$("${in[@]}" ss -Htan state time-wait dst "$BACKEND" | wc -l)
  tw_all=$("${in[@]}" ss -Htan state time-wait | wc -l)
  printf '%-22s %-9s %10s %10s %10s %12s %12s\n' "$label" "$tw" "$rate" "$ok" "$failed" \
    "$shortages" "$tw_backend / $tw_all"

  kill "$ringlb" "$serve" 2>/dev/null || true
  wait "$ringlb" "$serve" 2>/dev/null || true
  ip netns del "$ns"
}

echo "$($BIN --version 2>/dev/null || echo ringlb) | $PORTS ephemeral ports, $DURATION s per run," \
  "$WORKERS workers, $CLIENT_IPS x $CLIENTS client connections, one backend ($BACKEND)"
printf '%-22s %-9s %10s %10s %10s %12s %12s\n' "source" "tw_reuse" "conn/s" "served" "failed" \
  "shortages" "TIME_WAIT be/all"
for tw in $TW_REUSE; do
  run_once '["127.0.0.2"]' '["127.0.0.2"]' "$tw"
  run_once '127.0.0.2..5 (four)' '["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]' "$tw"
done
