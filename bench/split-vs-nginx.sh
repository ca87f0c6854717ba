#!/usr/bin/env bash
# First figures: canarygate vs nginx, one worker each, access logs off, on loopback, one run:
#  - split: the same 90/10 split (nginx split_clients + upstream keepalive) in front of the same backend;
#  - cache: a cached hit (canarygate stage cache vs nginx proxy_cache) of the same URL.
# Usage: bash bench/split-vs-nginx.sh [duration_seconds] [connections]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DUR="${1:-10}"
CONNS="${2:-32}"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$WORK"; }
trap cleanup EXIT

need() { command -v "$1" >/dev/null || { echo "installing $2"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need nginx nginx-light
need wrk wrk
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
CG="${CARGO_TARGET_DIR:-$ROOT/target}/release/canarygate"

PROD=18081 CANARY=18082 NGX=18090 CGW=18091 CGA=18092
mkdir -p "$WORK/backend" "$WORK/proxy"
chmod 755 "$WORK"   # nginx workers run as an unprivileged user and write the proxy cache here

cat > "$WORK/backend/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/backend/pid; error_log $WORK/backend/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$PROD; location / { return 200 "production\n"; } }
  server { listen 127.0.0.1:$CANARY; location / { return 200 "canary\n"; } } }
CONF
cat > "$WORK/proxy/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/proxy/pid; error_log $WORK/proxy/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  split_clients "\${request_id}" \$variant { 10% canary; * production; }
  upstream production { server 127.0.0.1:$PROD; keepalive 64; }
  upstream canary { server 127.0.0.1:$CANARY; keepalive 64; }
  proxy_cache_path $WORK/proxy/cache levels=1:2 keys_zone=stage:10m max_size=64m inactive=60m use_temp_path=off;
  server { listen 127.0.0.1:$NGX;
    location /cached/ { proxy_pass http://production; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache stage; proxy_cache_valid 200 5m; add_header x-cache \$upstream_cache_status; }
    location / { proxy_pass http://\$variant; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$WORK/cg.yaml" <<CONF
server:
  listen: 127.0.0.1:$CGW
  adminListen: 127.0.0.1:$CGA
  dataDir: $WORK/cg-data
  accessLog: {enabled: false}
apis:
  - name: bench
    routes:
      - path: /{proxy+}
        integration: {type: http, uri: "http://\${stageVariables.backend}/{proxy}"}
    stages:
      - name: prod
        variables: {backend: "127.0.0.1:$PROD"}
        canarySettings: {percentTraffic: 10, stageVariableOverrides: {backend: "127.0.0.1:$CANARY"}}
      - name: cached
        variables: {backend: "127.0.0.1:$PROD"}
        cache: {enabled: true, ttlSeconds: 300}
CONF

nginx -c "$WORK/backend/nginx.conf" -p "$WORK/backend" & PIDS+=($!)
nginx -c "$WORK/proxy/nginx.conf" -p "$WORK/proxy" & PIDS+=($!)
CANARYGATE_WORKER_THREADS=1 CANARYGATE_LOG=warn "$CG" serve --config "$WORK/cg.yaml" > "$WORK/cg.out" 2>&1 & PIDS+=($!)
CG_PID=$!
for i in $(seq 100); do
  curl -sf "http://127.0.0.1:$CGW/bench/prod/x" >/dev/null 2>&1 && curl -sf "http://127.0.0.1:$NGX/x" >/dev/null 2>&1 && break
  sleep 0.1
done
NGX_WORKER=$(pgrep -P "$(cat "$WORK/proxy/pid")" | head -1)

# Check the split and that there are no errors before measuring.
check() { # url
  local canary=0 fail=0 body
  for i in $(seq 1000); do
    body=$(curl -s -w ' %{http_code}' "$1") || { fail=$((fail+1)); continue; }
    [[ "$body" == *" 200" ]] || fail=$((fail+1))
    [[ "$body" == canary* ]] && canary=$((canary+1))
  done
  echo "$canary $fail"
}
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
measure() { # name url pid
  read -r canary fail < <(check "$2")
  if [ "$fail" -ne 0 ] || [ "$canary" -lt 60 ] || [ "$canary" -gt 140 ]; then
    echo "$1: split check failed: $canary canary of 1000, $fail errors" >&2; exit 1
  fi
  wrk -t1 -c"$CONNS" -d3s "$2" >/dev/null      # warm-up
  local t0 t1 out reqs rps errs
  t0=$(cpu_ticks "$3")
  out=$(wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$2")
  t1=$(cpu_ticks "$3")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  local p50 p99
  p50=$(echo "$out" | awk '$1=="50%" {print $2}'); p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  local tck; tck=$(getconf CLK_TCK)
  local us; us=$(awk -v a="$t0" -v b="$t1" -v n="$reqs" -v h="$tck" 'BEGIN { printf "%.1f", (b-a)/h*1e6/n }')
  printf '| %s | %s | %s | %s | %s | %s | %s/1000 |%s\n' "$1" "$rps" "$reqs" "$us" "$p50" "$p99" "$canary" "${errs:+ errors: $errs}"
}

# A cached hit: check that the URL is served from the cache, then load it.
measure_hit() { # name url pid header
  curl -s -o /dev/null "$2"
  curl -s -D - -o /dev/null "$2" | grep -qi "^$4: hit" || { echo "$1: second request was not a cache hit" >&2; exit 1; }
  wrk -t1 -c"$CONNS" -d3s "$2" >/dev/null
  local t0 t1 out reqs rps p50 p99 tck us
  t0=$(cpu_ticks "$3")
  out=$(wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$2")
  t1=$(cpu_ticks "$3")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}'); p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  tck=$(getconf CLK_TCK)
  us=$(awk -v a="$t0" -v b="$t1" -v n="$reqs" -v h="$tck" 'BEGIN { printf "%.1f", (b-a)/h*1e6/n }')
  printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$rps" "$reqs" "$us" "$p50" "$p99"
}

echo "### 90/10 split"
echo
echo "| target | requests/s | requests | proxy CPU µs/request | p50 | p99 | canary share (check) |"
echo "|---|---|---|---|---|---|---|"
measure "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') split_clients" "http://127.0.0.1:$NGX/x" "$NGX_WORKER"
measure "canarygate" "http://127.0.0.1:$CGW/bench/prod/x" "$CG_PID"
measure "nginx (again, interleaved)" "http://127.0.0.1:$NGX/x" "$NGX_WORKER"
measure "canarygate (again)" "http://127.0.0.1:$CGW/bench/prod/x" "$CG_PID"
echo
echo "### Cached hit"
echo
echo "| target | requests/s | requests | proxy CPU µs/request | p50 | p99 |"
echo "|---|---|---|---|---|---|"
measure_hit "nginx proxy_cache" "http://127.0.0.1:$NGX/cached/item" "$NGX_WORKER" x-cache
measure_hit "canarygate stage cache" "http://127.0.0.1:$CGW/bench/cached/item" "$CG_PID" x-canarygate-cache
measure_hit "nginx proxy_cache (again)" "http://127.0.0.1:$NGX/cached/item" "$NGX_WORKER" x-cache
measure_hit "canarygate stage cache (again)" "http://127.0.0.1:$CGW/bench/cached/item" "$CG_PID" x-canarygate-cache
echo
echo "method: wrk -t1 -c$CONNS -d${DUR}s after a 3 s warm-up; CPU from /proc/<pid>/stat utime+stime of the proxy process"
echo "(canarygate: whole process, CANARYGATE_WORKER_THREADS=1; nginx: its one worker). Backend: nginx return 200, 1 worker."
echo "machine: $(nproc) cores, $(uname -r), $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo)"
