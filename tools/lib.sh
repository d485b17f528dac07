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
