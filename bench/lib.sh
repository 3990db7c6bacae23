# Shared helpers of the bench/*.sh scripts: sourced, not run.
#
# Everything listens on 127.0.0.1 only. Every process a script starts goes
# through `bg_start`, and `bench_cleanup` (installed as the EXIT trap by
# `bench_init`) stops exactly those, by pid.

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_PIDS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# bench_init NAME: a scratch directory in $WORK and the cleanup trap.
bench_init() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/sis-bench-$1.XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

bench_cleanup() {
    local rc=$?
    local pid
    for pid in "${BENCH_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${BENCH_PIDS[@]}"; do
        # Up to 5 s each for a graceful stop, then SIGKILL.
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 || -n "${KEEP_WORK:-}" ]]; then
        log "logs and configs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}

# bg_start LOGFILE CMD...: starts CMD in the background, records its pid in
# BENCH_PIDS and in $LAST_PID.
bg_start() {
    local logfile=$1
    shift
    "$@" >"$logfile" 2>&1 &
    LAST_PID=$!
    BENCH_PIDS+=("$LAST_PID")
}

# bg_stop PID: stops one process started by bg_start and forgets it.
bg_stop() {
    local pid=$1 p keep=()
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${BENCH_PIDS[@]}"; do
        [[ $p == "$pid" ]] || keep+=("$p")
    done
    BENCH_PIDS=("${keep[@]}")
}

# need CMD PACKAGE: installs PACKAGE with apt-get when CMD is missing.
need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    log "$1 missing: apt-get install $2"
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    fi
    command -v "$1" >/dev/null 2>&1 || die "$1 still missing after installing $2"
}

# port_in_use PORT: any TCP socket on it, listening or connected.
port_in_use() {
    if command -v ss >/dev/null 2>&1; then
        [[ -n $(ss -Htan "( sport = :$1 )" 2>/dev/null) ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# free_port: a loopback TCP port no socket uses, below the kernel's ephemeral
# range (so no outgoing connection takes it meanwhile), not handed out
# earlier by this script.
BENCH_PORTS=" "
free_port() {
    local p low
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    ((low > 12000)) || low=32768
    for _ in $(seq 200); do
        p=$((10000 + RANDOM % (low - 10000)))
        [[ $BENCH_PORTS == *" $p "* ]] && continue
        if ! port_in_use "$p"; then
            BENCH_PORTS+="$p "
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

# wait_http URL [PID] [SECONDS]: until URL answers 2xx; fails at once when
# PID has exited.
wait_http() {
    local url=$1 pid=${2:-} secs=${3:-20}
    for _ in $(seq $((secs * 10))); do
        curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            die "process $pid exited before $url answered (logs in $WORK)"
        fi
        sleep 0.1
    done
    die "$url did not come up within ${secs}s"
}

# start_redis PORT: a redis-server without persistence; sets REDIS_PID.
start_redis() {
    local port=$1
    bg_start "$WORK/redis-$port.log" redis-server --port "$port" --bind 127.0.0.1 \
        --save "" --appendonly no --protected-mode yes --daemonize no \
        --dir "$WORK" --logfile ""
    REDIS_PID=$LAST_PID
    for _ in $(seq 100); do
        [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]] && return 0
        kill -0 "$REDIS_PID" 2>/dev/null || break
        sleep 0.1
    done
    die "redis-server on $port did not start (see $WORK/redis-$port.log)"
}

# build_release: the binary and the bench examples, release profile.
build_release() {
    need cargo cargo
    log "cargo build --release --bin sis-gateway --examples"
    (cd "$BENCH_ROOT" && cargo build --release --quiet --bin sis-gateway --examples) ||
        die "release build failed"
    GATEWAY_BIN="$BENCH_ROOT/target/release/sis-gateway"
    EXAMPLES="$BENCH_ROOT/target/release/examples"
}

# gen_keys DIR ALG: a signing key and a sealing key in DIR; sets SIGNING_KEY
# and SEALING_KEY, written by `sis-gateway keygen`.
gen_keys() {
    local dir=$1 alg=$2
    "$GATEWAY_BIN" keygen --dir "$dir" --algorithm "$alg" >"$dir.keygen.log" 2>&1 ||
        die "sis-gateway keygen failed: $(cat "$dir.keygen.log")"
    SIGNING_KEY=$(find "$dir" -maxdepth 1 -name 'signing-*.pem' | head -n1)
    SEALING_KEY=$(find "$dir" -maxdepth 1 -name 'sealing*' | head -n1)
    [[ -n $SIGNING_KEY && -n $SEALING_KEY ]] || die "no keys written to $dir"
}

cpu_model() {
    local m
    m=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')
    echo "${m:-unknown cpu}, $(nproc) cores"
}

# other_load: load average and the processes using more than 5% CPU over
# one second, sampled before a script starts anything, for the report.
other_load() {
    local busy
    busy=$(top -b -n 2 -d 1 -w 200 2>/dev/null | awk '
        /^ *PID / { frame++; next }
        frame == 2 && $9 + 0 > 5.0 { printf "%s(%s%%) ", $12, $9 }')
    echo "loadavg $(cut -d' ' -f1-3 /proc/loadavg); busy: ${busy:-none}"
}
