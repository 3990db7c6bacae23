#!/usr/bin/env bash
# Pass-through throughput: sis-gateway vs nginx proxying the same upstream on
# the same machine, measured side by side (target in the README's Benchmarks section: ratio >= 1.0, p99 no worse).
#
# Two nginx peers: "nginx" does what the gateway does to every request on a
# public route (a request id made, sent upstream and returned to the client;
# X-Forwarded-For, -Proto and -Host), "nginx-min" only X-Forwarded-For and
# -Proto. The gateway is compared with both.
#
#   bench/passthrough.sh                  # 20 rounds x 3 s, 64 connections, 2 wrk threads
#   ROUNDS=5 DURATION=20s CONNECTIONS=128 bench/passthrough.sh
#   ACCESS_LOG=1 bench/passthrough.sh     # both proxies write an access log line per request
#
# The upstream is nginx answering a fixed 200 body. Both proxies keep pooled
# keep-alive connections to it; nginx runs 2 worker processes, the gateway 2
# tokio worker threads. Everything listens on 127.0.0.1; all processes are
# stopped on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-20}
DURATION=${DURATION:-3s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-2}
ACCESS_LOG=${ACCESS_LOG:-0}
UPSTREAM_PORT=${UPSTREAM_PORT:-18081}
NGINX_PORT=${NGINX_PORT:-18082}
GATEWAY_PORT=${GATEWAY_PORT:-18083}
NGINX_MIN_PORT=${NGINX_MIN_PORT:-18084}

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
work=$(mktemp -d /tmp/sis-bench.XXXXXX)
pids=()

cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

need() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx-light)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v curl >/dev/null || missing+=(curl)
    if ((${#missing[@]})); then
        echo "installing ${missing[*]}" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

wait_for() { # url
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "not answering: $1" >&2
    return 1
}

nginx_access_log() { # file
    if [[ $ACCESS_LOG == 1 ]]; then echo "access_log $1;"; else echo "access_log off;"; fi
}

start_nginx() { # name conf-body
    local dir="$work/$1"
    mkdir -p "$dir/logs"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes $WORKERS;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
    $(nginx_access_log "$dir/logs/access.log")
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 1000000;
    $2
}
EOF
    nginx -p "$dir" -c "$dir/nginx.conf" &
    pids+=($!)
    last_nginx=$!
}

# utime + stime, in clock ticks, of a process and its children (nginx workers).
cpu_ticks() { # pid
    local total=0 p
    for p in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

need
echo "building the gateway (release)…" >&2
(cd "$root" && cargo build --release --quiet)

# The upstream: a fixed 200 body.
start_nginx upstream "
    server {
        listen 127.0.0.1:$UPSTREAM_PORT reuseport backlog=4096;
        location / { default_type text/plain; return 200 'hello from the upstream, a small fixed body for the pass-through benchmark\n'; }
    }"

# nginx as the reverse proxy under test: port, then extra directives.
start_proxy() {
    start_nginx "proxy-$1" "
    upstream app { server 127.0.0.1:$UPSTREAM_PORT; keepalive 256; }
    server {
        listen 127.0.0.1:$1 reuseport backlog=4096;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host \$proxy_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_buffering off;
            $2
        }
    }"
}
start_proxy "$NGINX_PORT" "
            proxy_set_header X-Forwarded-Host \$http_host;
            proxy_set_header X-Request-Id \$request_id;
            add_header X-Request-Id \$request_id always;"
nginx_pid=$last_nginx
start_proxy "$NGINX_MIN_PORT" ""
nginx_min_pid=$last_nginx

# The gateway under test.
cat >"$work/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$GATEWAY_PORT"
[cookies]
refresh_path = "/"
[[routes]]
path_prefix = "/"
upstream = "http://127.0.0.1:$UPSTREAM_PORT"
auth = "public"
EOF
if [[ $ACCESS_LOG == 1 ]]; then gw_log=info; else gw_log=warn; fi
TOKIO_WORKER_THREADS=$WORKERS RUST_LOG=$gw_log "$root/target/release/sis-gateway" run --config "$work/gateway.toml" \
    >"$work/gateway.log" 2>&1 &
pids+=($!)
gateway_pid=$!

wait_for "http://127.0.0.1:$UPSTREAM_PORT/"
wait_for "http://127.0.0.1:$NGINX_PORT/"
wait_for "http://127.0.0.1:$NGINX_MIN_PORT/"
wait_for "http://127.0.0.1:$GATEWAY_PORT/"

# One wrk run; prints "requests_per_second p99_ms cpu_us_per_request", the
# last being the proxy's own CPU time (user + system) per request.
measure() { # url pid
    local out rps p99 before after requests
    before=$(cpu_ticks "$2")
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$1")
    after=$(cpu_ticks "$2")
    if grep -q "Non-2xx" <<<"$out"; then
        echo "non-2xx responses from $1:" >&2
        echo "$out" >&2
        exit 1
    fi
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; print v}' <<<"$out")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    awk -v r="$rps" -v p="$p99" -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" \
        'BEGIN { printf "%s %s %.1f\n", r, p, t * 1e6 / hz / n }'
}

echo "warming up…" >&2
for port in "$NGINX_PORT" "$NGINX_MIN_PORT" "$GATEWAY_PORT"; do
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$port/" >/dev/null
done

printf '%-7s %-10s %12s %10s %14s\n' round proxy req/s p99_ms cpu_us/req
names=(nginx nginx-min gateway)
urls=("http://127.0.0.1:$NGINX_PORT/" "http://127.0.0.1:$NGINX_MIN_PORT/" "http://127.0.0.1:$GATEWAY_PORT/")
procs=("$nginx_pid" "$nginx_min_pid" "$gateway_pid")
declare -A rps_of p99_of cpu_of ratio_of p99_ratio_of
# Each round starts with the next proxy, so none always runs right after
# the same other one while the machine drifts.
for round in $(seq 1 "$ROUNDS"); do
    declare -A this_rps=() this_p99=()
    for j in 0 1 2; do
        i=$(((j + round - 1) % 3))
        read -r rps p99 cpu < <(measure "${urls[$i]}" "${procs[$i]}")
        rps_of[$i]+="$rps " p99_of[$i]+="$p99 " cpu_of[$i]+="$cpu "
        this_rps[$i]=$rps this_p99[$i]=$p99
        printf '%-7s %-10s %12.0f %10.2f %14.1f\n' "$round" "${names[$i]}" "$rps" "$p99" "$cpu"
    done
    for i in 0 1; do
        ratio_of[$i]+="$(awk -v g="${this_rps[2]}" -v n="${this_rps[$i]}" 'BEGIN {printf "%.4f", g/n}') "
        p99_ratio_of[$i]+="$(awk -v g="${this_p99[2]}" -v n="${this_p99[$i]}" 'BEGIN {printf "%.4f", g/n}') "
    done
done

mean() { printf '%s\n' $1 | awk '{s+=$1} END {printf "%.2f", s/NR}'; }
median() { printf '%s\n' $1 | sort -g | awk '{v[NR]=$1} END {printf "%.2f", NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
# The machine's speed drifts in phases of tens of seconds, longer than a
# round: a proxy compared with the others of its own round meets the same
# phase, so the ratios are taken round by round. A round another tenant of
# the machine disturbs moves a mean far more than a median; both are shown.
echo
printf '%-10s %22s %22s %14s\n' "" "req/s mean (median)" "p99 ms mean (median)" "cpu_us/req"
for i in 0 1 2; do
    printf '%-10s %11.0f (%8.0f) %12.2f (%7.2f) %14.1f\n' "${names[$i]}" \
        "$(mean "${rps_of[$i]}")" "$(median "${rps_of[$i]}")" \
        "$(mean "${p99_of[$i]}")" "$(median "${p99_of[$i]}")" "$(mean "${cpu_of[$i]}")"
done
for i in 0 1; do
    printf 'ratio gateway/%s, round by round: throughput %.2f (mean %.2f), p99 %.2f (mean %.2f)\n' \
        "${names[$i]}" "$(median "${ratio_of[$i]}")" "$(mean "${ratio_of[$i]}")" \
        "$(median "${p99_ratio_of[$i]}")" "$(mean "${p99_ratio_of[$i]}")"
done
