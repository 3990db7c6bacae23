#!/usr/bin/env bash
# Session-route benchmark: requests/s on an `auth = "session"` route with a
# valid access cookie, against the same upstream behind an `auth = "public"`
# route, in one run. Target: session / public >= 0.9.
#
# On 127.0.0.1 only: nginx serves a small fixed body; the gateway (release,
# memory store: a valid access cookie costs no store call) routes /pub
# (public), /sess (session) and /check (required, for the sanity check) to it.
# One session is opened through the admin API; wrk then alternates /pub and
# /sess for ROUNDS rounds, each after a short warm-up. Both routes get the
# same request, access cookie included (a browser sends it everywhere), so
# the difference is the session work alone.
#
# Usage: bench/session_route.sh
# Knobs (environment): ROUNDS=3 DURATION=10 THREADS=2 CONNECTIONS=64
#   WARMUP=2 KEEP_WORK=1
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP=${WARMUP:-2}
TARGET_RATIO=0.9
ADMIN_TOKEN=bench-admin-$RANDOM$RANDOM

need wrk wrk
need nginx nginx-light
need curl curl
need jq jq
bench_init session-route

LOAD_BEFORE=$(other_load)
log "before start: $LOAD_BEFORE"
build_release

UP_PORT=$(free_port)
GW_PORT=$(free_port)
ADMIN_PORT=$(free_port)

mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<EOF
# Written by bench/session_route.sh
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$UP_PORT;
        default_type text/plain;
        location / { return 200 "fixed upstream body, 40 bytes long....\n"; }
    }
}
EOF
bg_start "$WORK/nginx/stdout.log" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/logs/error.log"
NGINX_PID=$LAST_PID
wait_http "http://127.0.0.1:$UP_PORT/" "$NGINX_PID"
log "nginx upstream on 127.0.0.1:$UP_PORT (pid $NGINX_PID)"

cat >"$WORK/gateway.toml" <<EOF
# Written by bench/session_route.sh
[server]
listen = "127.0.0.1:$GW_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"

[admin]
token = "$ADMIN_TOKEN"

[store]
url = "memory://"

[cookies]
secure = false
refresh_path = "/"

[[clients]]
client_id = "web"
authentication = "cookie"
anti_csrf = false
access_token_ttl = "1h"
refresh_token_ttl = "2h"

[[routes]]
path_prefix = "/pub"
upstream = "http://127.0.0.1:$UP_PORT"
auth = "public"

[[routes]]
path_prefix = "/sess"
upstream = "http://127.0.0.1:$UP_PORT"
auth = "session"

[[routes]]
path_prefix = "/check"
upstream = "http://127.0.0.1:$UP_PORT"
auth = "required"
EOF
"$GATEWAY_BIN" check --config "$WORK/gateway.toml" >/dev/null || die "config rejected: $WORK/gateway.toml"
# Warnings only (ephemeral keys are fine here): the access log would
# otherwise write a line per request on both routes.
RUST_LOG=warn bg_start "$WORK/gateway.log" "$GATEWAY_BIN" run --config "$WORK/gateway.toml"
GW_PID=$LAST_PID
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" "$GW_PID"
log "gateway on 127.0.0.1:$GW_PORT (pid $GW_PID)"

ACCESS=$(curl -fsS --max-time 5 -X POST "http://127.0.0.1:$ADMIN_PORT/admin/sessions" \
    -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d '{"user_uuid":"bench-user","client_id":"web","user_attributes":{"first_name":"Bench"}}' |
    jq -r .access_token)
[[ -n $ACCESS && $ACCESS != null ]] || die "no access token from the admin API"
COOKIE="Cookie: vagov_access_token=$ACCESS"

# Sanity: the cookie is a valid session (a required route lets it through),
# and both benchmarked routes answer 200.
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@"; }
[[ $(code "http://127.0.0.1:$GW_PORT/check") == 401 ]] || die "/check without a cookie is not 401"
[[ $(code -H "$COOKIE" "http://127.0.0.1:$GW_PORT/check") == 200 ]] || die "the access cookie is not accepted"
[[ $(code -H "$COOKIE" "http://127.0.0.1:$GW_PORT/pub") == 200 ]] || die "/pub does not answer 200"
[[ $(code -H "$COOKIE" "http://127.0.0.1:$GW_PORT/sess") == 200 ]] || die "/sess does not answer 200"

# to_ms 1.23ms | 456.00us | 1.01s
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.2f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.2f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.2f", v * 1000 }
        else print v }'
}

gw_ticks() { awk '{ print $14 + $15 }' "/proc/$GW_PID/stat"; }
CLK_TCK=$(getconf CLK_TCK)

# run_wrk PATH SECONDS [HEADER]: prints "rps p99_ms non2xx gw_cpu_us_per_req"
run_wrk() {
    local path=$1 secs=$2 out t0 t1
    local hdr=()
    [[ -n ${3:-} ]] && hdr=(-H "$3")
    t0=$(gw_ticks)
    out=$(timeout $((secs + 30)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${secs}s" --latency \
        "${hdr[@]}" "http://127.0.0.1:$GW_PORT$path") || die "wrk failed on $path"
    t1=$(gw_ticks)
    echo "$out" >>"$WORK/wrk.log"
    local rps p99 non2xx total cpu_us
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
    total=$(awk '/requests in/ { print $1 }' <<<"$out")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$out")
    cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$total" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')
    echo "$rps $p99 ${non2xx:-0} $cpu_us"
}

declare -a PUB_RPS SESS_RPS PUB_P99 SESS_P99 PUB_CPU SESS_CPU
BAD=0
for r in $(seq "$ROUNDS"); do
    for which in pub sess; do
        path=/$which
        run_wrk "$path" "$WARMUP" "$COOKIE" >/dev/null
        read -r rps p99 bad cpu < <(run_wrk "$path" "$DURATION" "$COOKIE") || true
        [[ -n ${rps:-} && -n ${cpu:-} ]] || die "wrk run on $path failed (see $WORK/wrk.log)"
        BAD=$((BAD + bad))
        log "round $r $path: $rps req/s, p99 $p99 ms, non-2xx $bad, gateway CPU $cpu us/request"
        if [[ $which == pub ]]; then
            PUB_RPS+=("$rps") PUB_P99+=("$p99") PUB_CPU+=("$cpu")
        else
            SESS_RPS+=("$rps") SESS_P99+=("$p99") SESS_CPU+=("$cpu")
        fi
    done
done
GW_RSS=$(awk '/^VmRSS/ { print $2 }' "/proc/$GW_PID/status")

mean() { printf '%s\n' "$@" | awk '{ s += $1 } END { printf "%.0f", s / NR }'; }
mean1() { printf '%s\n' "$@" | awk '{ s += $1 } END { printf "%.1f", s / NR }'; }
worst() { printf '%s\n' "$@" | sort -g | tail -n1; }
PUB_MEAN=$(mean "${PUB_RPS[@]}")
SESS_MEAN=$(mean "${SESS_RPS[@]}")
RATIO=$(awk -v a="$SESS_MEAN" -v b="$PUB_MEAN" 'BEGIN { printf "%.2f", a / b }')
VERDICT=$(awk -v r="$RATIO" -v t="$TARGET_RATIO" 'BEGIN { print (r >= t) ? "met" : "MISSED" }')

echo
echo "Session-route benchmark — $(cpu_model), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "wrk -t$THREADS -c$CONNECTIONS, same request with a valid access cookie on both routes, $ROUNDS rounds x ${DURATION}s per route (after ${WARMUP}s warm-up each), nginx upstream (1 worker), memory store"
echo "other load before start: $LOAD_BEFORE"
echo
printf '%-24s %s\n' "route" "req/s per round (p99 ms)"
line() {
    local name=$1
    shift
    local n=$(($# / 2)) i s=""
    local args=("$@")
    for ((i = 0; i < n; i++)); do s+=$(printf '%8s (%s)  ' "${args[i]}" "${args[i + n]}"); done
    printf '%-24s %s\n' "$name" "$s"
}
line "/pub  (auth=public)" "${PUB_RPS[@]}" "${PUB_P99[@]}"
line "/sess (auth=session)" "${SESS_RPS[@]}" "${SESS_P99[@]}"
echo
printf '%-24s %10s %14s %18s\n' "" "mean req/s" "worst p99 ms" "gw CPU us/request"
printf '%-24s %10s %14s %18s\n' "public" "$PUB_MEAN" "$(worst "${PUB_P99[@]}")" "$(mean1 "${PUB_CPU[@]}")"
printf '%-24s %10s %14s %18s\n' "session (valid cookie)" "$SESS_MEAN" "$(worst "${SESS_P99[@]}")" "$(mean1 "${SESS_CPU[@]}")"
printf '%-24s %10s   (target >= %s: %s)\n' "session / public" "$RATIO" "$TARGET_RATIO" "$VERDICT"
echo "non-2xx responses: $BAD; gateway RSS after the run: $((GW_RSS / 1024)) MiB"
