#!/usr/bin/env bash
# Instructions per request: user-space instructions the gateway executes per
# request on a `public` route and on a `session` route with a valid access
# cookie, counted by callgrind. Unlike a rate, the count barely moves with
# what else the machine is doing, so two builds can be compared on a busy
# machine, and small changes to the request path show.
#
# The gateway (2 worker threads, memory store) runs under
# `valgrind --tool=callgrind` in front of an nginx upstream answering a fixed
# body. For each route wrk loads it WARMUP seconds, the counters are zeroed,
# wrk runs DURATION seconds more, the counters are dumped and divided by the
# requests wrk counted. Both routes get the same request, access cookie
# included, as in session_route.sh.
#
# Usage: bench/instructions.sh [GATEWAY_BIN]
#   GATEWAY_BIN defaults to this tree's release build (built when missing);
#   give another build's binary to compare two builds.
# Knobs (environment): WARMUP=3 DURATION=8 CONNECTIONS=8
#   CALLGRIND_DIR=DIR keeps each route's dump as DIR/pub.callgrind and
#   DIR/sess.callgrind, for callgrind_annotate (which functions changed).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

WARMUP=${WARMUP:-3}
DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-8}
ADMIN_TOKEN=bench-admin-$RANDOM$RANDOM

need valgrind valgrind
need wrk wrk
need nginx nginx-light
need curl curl
need jq jq
bench_init instructions

if [[ $# -ge 1 ]]; then
    GATEWAY_BIN=$1
else
    build_release
fi
[[ -x $GATEWAY_BIN ]] || die "no gateway binary at $GATEWAY_BIN"

UP_PORT=$(free_port)
GW_PORT=$(free_port)
ADMIN_PORT=$(free_port)

mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<EOF
# Written by bench/instructions.sh
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 1024; }
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
wait_http "http://127.0.0.1:$UP_PORT/" "$LAST_PID"

cat >"$WORK/gateway.toml" <<EOF
# Written by bench/instructions.sh
[server]
listen = "127.0.0.1:$GW_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"

[admin]
token = "$ADMIN_TOKEN"

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
EOF
"$GATEWAY_BIN" check --config "$WORK/gateway.toml" >/dev/null || die "config rejected: $WORK/gateway.toml"
TOKIO_WORKER_THREADS=2 RUST_LOG=warn bg_start "$WORK/gateway.log" \
    valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out.%p.%n" \
    "$GATEWAY_BIN" run --config "$WORK/gateway.toml"
GW_PID=$LAST_PID
# Under valgrind the gateway starts slowly.
wait_http "http://127.0.0.1:$ADMIN_PORT/healthz" "$GW_PID" 120

ACCESS=$(curl -fsS --max-time 30 -X POST "http://127.0.0.1:$ADMIN_PORT/admin/sessions" \
    -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d '{"user_uuid":"bench-user","client_id":"web","user_attributes":{"first_name":"Bench"}}' |
    jq -r .access_token)
[[ -n $ACCESS && $ACCESS != null ]] || die "no access token from the admin API"
COOKIE="Cookie: vagov_access_token=$ACCESS"

log "gateway $GATEWAY_BIN under callgrind; $CONNECTIONS connections, ${WARMUP}s warm-up, ${DURATION}s counted per route"
for route in pub sess; do
    url="http://127.0.0.1:$GW_PORT/$route"
    wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" -H "$COOKIE" "$url" >/dev/null
    callgrind_control -z "$GW_PID" >/dev/null 2>&1
    out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -H "$COOKIE" "$url")
    callgrind_control -d "$GW_PID" >/dev/null 2>&1
    ! grep -q "Non-2xx" <<<"$out" || die "non-2xx answers on /$route: $out"
    requests=$(awk '/requests in/ { print $1 }' <<<"$out")
    # The dump is written as callgrind_control returns; give it a moment.
    sleep 1
    dump=$(ls -t "$WORK"/callgrind.out.* | head -1)
    total=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
    if [[ -n ${CALLGRIND_DIR:-} ]]; then
        mkdir -p "$CALLGRIND_DIR"
        mv "$dump" "$CALLGRIND_DIR/$route.callgrind"
    else
        rm -f "$dump"
    fi
    printf '%-6s (auth=%s)  %8d requests  %6d instructions per request\n' \
        "/$route" "$([[ $route == pub ]] && echo public || echo session)" \
        "$requests" $((total / requests))
done
