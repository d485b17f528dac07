#!/usr/bin/env bash
# UDP benchmark: ringlb against NGINX's stream UDP proxy on this host, in the same run.
#
# INTERIM load generator: examples/udp_rr.rs (windowed request/response over N client sockets,
# fixed duration, prints req/s and round-trip percentiles). Switch to `ringlb bench udp` once the
# load tool lands.
#
# Starts two UDP echo backends (udp_rr echo, 1 thread each) on loopback, NGINX with
# worker_processes = ringlb's workers (stream module, `listen ... udp reuseport`, sessions that
# last like ringlb's flows), and ringlb (release build), both round robin over the two backends.
# Then, in interleaved rounds (ringlb, nginx, direct, ringlb, ...), for each datagram size it runs
# udp_rr load with CLIENTS flows of WINDOW requests in flight for SECS seconds, and prints the
# medians and the ratio ringlb/NGINX as a markdown table. "direct" is the load against one echo
# backend with no proxy.
#
# Usage: tools/bench-udp.sh [rounds]     (default 3; every load and every server is bounded in time)
# Needs: nginx and libnginx-mod-stream (installed with apt-get when absent).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
WORKERS=${WORKERS:-2}
CLIENTS=${CLIENTS:-32}
WINDOW=${WINDOW:-4}
SECS=${SECS:-5}
SIZES=${SIZES:-"64 1400"}
B1=29101 B2=29102 LB=29200 NG=29300
TARGET_DIR=${CARGO_TARGET_DIR:-target}
NGINX_STREAM=/usr/lib/nginx/modules/ngx_stream_module.so

source tools/lib.sh
if ! need nginx || [ ! -f "$NGINX_STREAM" ]; then
  apt_install nginx libnginx-mod-stream
fi

cargo build --release --locked -q --bin ringlb --example udp_rr
RINGLB="$TARGET_DIR/release/ringlb"
UDP_RR="$TARGET_DIR/release/examples/udp_rr"

# Servers outlive the whole run, then stop by themselves.
LIFETIME=$(( ROUNDS * 3 * $(wc -w <<<"$SIZES") * (SECS + 3) + 120 ))
"$UDP_RR" echo --listen 127.0.0.1:$B1 --threads 1 --for-secs $LIFETIME &
pids+=($!)
"$UDP_RR" echo --listen 127.0.0.1:$B2 --threads 1 --for-secs $LIFETIME &
pids+=($!)

cat >"$work/ringlb.toml" <<EOF
[runtime]
workers = $WORKERS

[[service]]
name = "echo"
listen = "127.0.0.1:$LB"
protocol = "udp"
algorithm = "round_robin"
[[service.backend]]
address = "127.0.0.1:$B1"
[[service.backend]]
address = "127.0.0.1:$B2"
EOF
timeout $LIFETIME "$RINGLB" run --config "$work/ringlb.toml" --log-level warn &
pids+=($!)

cat >"$work/nginx.conf" <<EOF
load_module $NGINX_STREAM;
worker_processes $WORKERS;
daemon off;
pid $work/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
stream {
    upstream echo {
        server 127.0.0.1:$B1;
        server 127.0.0.1:$B2;
    }
    server {
        listen 127.0.0.1:$NG udp reuseport;
        proxy_pass echo;
        # A session per client address that lasts while it is active, as ringlb's flows.
        proxy_timeout 30s;
    }
}
EOF
timeout $LIFETIME nginx -c "$work/nginx.conf" -p "$work" >"$work/nginx.log" 2>&1 &
pids+=($!)

# Wait (bounded) until each target answers a request.
for port in $B1 $B2 $LB $NG; do
  if ! "$UDP_RR" load --target 127.0.0.1:$port --clients 1 --window 1 --size 64 --warmup-secs 0 --secs 1 \
      | grep -qv 'rps=0 '; then
    sleep 1
    "$UDP_RR" load --target 127.0.0.1:$port --clients 1 --window 1 --size 64 --warmup-secs 0 --secs 1 \
      | grep -qv 'rps=0 ' || { echo "nothing answers on 127.0.0.1:$port; nginx log:" >&2; cat "$work/nginx.log" >&2; exit 1; }
  fi
done

rps() { # port size -> "rps p50 p99 lost"
  timeout $((SECS + 30)) "$UDP_RR" load --target "127.0.0.1:$1" --clients "$CLIENTS" --window "$WINDOW" \
    --size "$2" --warmup-secs 1 --secs "$SECS" \
    | sed -E 's/rps=([0-9.]+) p50_us=([0-9]+) p99_us=([0-9]+) lost=([0-9]+)/\1 \2 \3 \4/'
}

declare -A R P L
for round in $(seq "$ROUNDS"); do
  for size in $SIZES; do
    for target in ringlb nginx direct; do
      case $target in
        ringlb) port=$LB ;;
        nginx) port=$NG ;;
        direct) port=$B1 ;;
      esac
      read -r r p50 p99 lost < <(rps $port "$size")
      R[${target}_$size]+="$r"$'\n'
      P[${target}_$size]+="$p99"$'\n'
      L[${target}_$size]=$(( ${L[${target}_$size]:-0} + lost ))
      echo "round $round size $size $target: $r req/s, p50 ${p50}us, p99 ${p99}us, lost $lost" >&2
    done
  done
done

m() { printf '%s' "$1" | median; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo
echo "Host: $(nproc) CPUs, $(uname -r); ringlb $WORKERS workers, $(nginx -v 2>&1 | sed 's/.*: //') worker_processes $WORKERS;"
echo "load: $CLIENTS client flows x $WINDOW in flight, ${SECS}s per run; median of $ROUNDS interleaved rounds"
echo
echo "| datagram | ringlb req/s | NGINX req/s | direct req/s | ringlb / NGINX | p99 µs ringlb / NGINX | lost ringlb / NGINX |"
echo "|---|---|---|---|---|---|---|"
for size in $SIZES; do
  rr=$(m "${R[ringlb_$size]}") rn=$(m "${R[nginx_$size]}") rd=$(m "${R[direct_$size]}")
  pr=$(m "${P[ringlb_$size]}") pn=$(m "${P[nginx_$size]}")
  echo "| $size B | $rr | $rn | $rd | $(ratio "$rr" "$rn") | $pr / $pn | ${L[ringlb_$size]} / ${L[nginx_$size]} |"
done
