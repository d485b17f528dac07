# Shared by the benchmark scripts in tools/ (sourced, not run): a scratch directory, background
# processes stopped when the script exits, packages installed with apt-get when missing, and a
# throwaway redis-server.

# $work: scratch directory. Every pid appended to $pids is killed when the script exits.
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# need CMD: whether CMD is on the PATH.
need() { command -v "$1" >/dev/null 2>&1; }

# apt_install PKG...: installs the packages with apt-get, saying so on stderr.
apt_install() {
  echo "installing $* with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# start_redis PORT: a redis-server on 127.0.0.1:PORT without persistence (log in $work), stopped
# on exit.
start_redis() {
  redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    >"$work/redis-$1.log" 2>&1 &
  pids+=($!)
}

# cpu_ticks PID: user+system clock ticks (getconf CLK_TCK per second) of the process, all its
# threads, and its children.
cpu_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo $total
}

# median: the median of the numbers on standard input (whitespace-separated; empty and "nan"
# values skipped), or "n/a" when there is none.
median() {
  tr ' ' '\n' | awk '$1 != "" && $1 != "nan"' | sort -g \
    | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
}

# listening PORT: whether something accepts TCP connections on 127.0.0.1:PORT within 10 s.
listening() {
  local _
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# wait_listening PORT...: waits (listening) for each port; when one does not answer, prints the
# logs in $work and ends the script.
wait_listening() {
  local port
  for port in "$@"; do
    listening "$port" && continue
    echo "nothing listens on 127.0.0.1:$port; logs in $work" >&2
    cat "$work"/*.log >&2
    exit 1
  done
}

# The A/B scripts (ab.sh, access-bench.sh, proxy-ab.sh) run two variants in interleaved rounds
# and append a line per variant and round to a results file: `round N VARIANT NAME VALUE ...`.

# start_variant BIN V: `BIN run` on $work/V.toml (log in $work/V.log), stopped on exit; its pid
# goes in PID[V] (an associative array the script declares).
start_variant() {
  "$1" run -c "$work/$2.toml" --log-level warn >"$work/$2.log" 2>&1 &
  pids+=($!)
  PID[$2]=$!
}

# per_unit TICKS_BEFORE TICKS_AFTER UNITS: microseconds of CPU per unit ("nan" without units).
per_unit() {
  awk -v a="$1" -v b="$2" -v n="$3" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { if (n + 0 > 0) printf "%.2f", (b - a) / hz * 1e6 / n; else print "nan" }'
}

# bench_json BIN KIND PORT: the JSON report of `BIN bench KIND` (50 connections, $DURATION
# seconds) against 127.0.0.1:PORT, or {} when the run failed.
bench_json() {
  "$1" bench "$2" "127.0.0.1:$3" --connections 50 --duration "${DURATION}s" --json 2>/dev/null \
    || echo '{}'
}

# bench_round BIN PORT PID: `BIN bench rr` (64 B requests) then `BIN bench connect` (a connection
# per request) against 127.0.0.1:PORT, measuring the CPU time of process PID (cpu_ticks) during
# each. Sets rr and cn (requests and connections per second, "nan" when a run failed), rr_cpu and
# cn_cpu (microseconds of PID's CPU per request and per connection), rr_errors and cn_errors, and
# ticks (PID's CPU ticks at the end, for a measurement that follows).
bench_round() {
  local bin=$1 port=$2 pid=$3 json t0 t1
  t0=$(cpu_ticks "$pid")
  json=$(bench_json "$bin" rr "$port")
  t1=$(cpu_ticks "$pid")
  rr=$(jq -r '.requests_per_s // "nan"' <<<"$json")
  rr_errors=$(jq -r '.errors_total // 0' <<<"$json")
  rr_cpu=$(per_unit "$t0" "$t1" "$(jq -r '.requests // 0' <<<"$json")")
  json=$(bench_json "$bin" connect "$port")
  ticks=$(cpu_ticks "$pid")
  cn=$(jq -r '.connections_per_s // "nan"' <<<"$json")
  cn_errors=$(jq -r '.errors_total // 0' <<<"$json")
  cn_cpu=$(per_unit "$t1" "$ticks" "$(jq -r '.connections_opened // 0' <<<"$json")")
}

# round_values RESULTS NAME VARIANT: the values after NAME in VARIANT's lines of RESULTS, one per
# line.
round_values() {
  awk -v name="$2" -v v="$3" '$3 == v { for (i = 4; i < NF; i++) if ($i == name) print $(i + 1) }' \
    "$1"
}

# median_rows RESULTS WHO DIGITS A B NAME...: a Markdown table row per NAME: the medians of
# variant A's and variant B's values in RESULTS and the ratio B / A with DIGITS decimals ("n/a"
# when A's median is not a positive number). A NAME ending in _cpu_us is labelled as WHO's CPU
# per unit.
median_rows() {
  local results=$1 who=$2 digits=$3 a=$4 b=$5 name ma mb label
  shift 5
  for name in "$@"; do
    ma=$(round_values "$results" "$name" "$a" | median)
    mb=$(round_values "$results" "$name" "$b" | median)
    case $name in
      *_cpu_us) label="${name%_cpu_us}: $who CPU per unit (us, lower is better)" ;;
      *) label="$name (per s)" ;;
    esac
    echo "| $label | $ma | $mb | $(awk -v a="$ma" -v b="$mb" -v d="$digits" \
      'BEGIN { if (a + 0 > 0) printf "%." d "f", b / a; else print "n/a" }') |"
  done
}

# nginx_stream_head: the start of an NGINX config for the comparison scripts (stream module,
# $WORKERS workers, pid and logs under $work/nginx), up to the open `stream {` block with its
# timeouts and buffer; the caller writes the `server` lines and the closing brace.
nginx_stream_head() {
  cat <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes $WORKERS;
worker_rlimit_nofile 20000;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 10000; }
stream {
    proxy_connect_timeout 3s;
    proxy_timeout 10m;
    proxy_buffer_size 16k;
EOF
}

# ringlb_service NAME LISTEN BACKEND [LINE...]: one `[[service]]` table of a ringlb config for
# the comparison scripts, with one backend; each LINE (e.g. 'protocol = "udp"') goes into the
# service's own table.
ringlb_service() {
  printf '\n[[service]]\nname = "%s"\nlisten = "%s"\n' "$1" "$2"
  local line
  for line in "${@:4}"; do printf '%s\n' "$line"; done
  printf '[[service.backend]]\naddress = "%s"\n' "$3"
}

# haproxy_tcp_head: the start of an HAProxy config for the comparison scripts (tcp mode, round
# robin, $WORKERS threads); the caller adds `listen` sections with haproxy_listen.
haproxy_tcp_head() {
  cat <<HEAD
global
    nbthread $WORKERS
    # Each proxied connection takes two fds; stay inside a 20,000 open-files limit.
    maxconn 8000
defaults
    mode tcp
    # Each frontend as many as the process (compare.sh's scale workload holds 5000).
    maxconn 8000
    balance roundrobin
    timeout connect 3s
    timeout client 10m
    timeout server 10m
HEAD
}

# haproxy_listen NAME BIND SERVER: one `listen` section with one server.
haproxy_listen() {
  printf 'listen %s\n    bind %s\n    server %s1 %s\n' "$1" "$2" "$1" "$3"
}
