#!/usr/bin/env bash
# Kite's local demo: nginx in a cgroup of its own, bounded wrk load at it (and, from inside
# the cgroup, calls out to a Python upstream), and Kite measuring the cgroup with eBPF.
#
#   demo.sh          kite-loader prints a line per endpoint every 2 s (about 25 s in all)
#   demo.sh --tui    kite-agent measures, kite-tui shows it (load for 2 minutes; q quits)
#
# Cleans up everything it started. Needs root. KITE_DEMO_BIN_DIR=<dir> uses binaries already
# built there instead of building release ones (the demo's own test does).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=loader
case "${1:-}" in
    "") ;;
    --tui) mode=tui ;;
    *) echo "usage: demo.sh [--tui]" >&2; exit 2 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh: run as root (loading eBPF programs and making cgroups need it)" >&2
    exit 1
fi
scripts/install-deps.sh
# shellcheck disable=SC1091
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
bin=${KITE_DEMO_BIN_DIR:-$root/target/release}
if [ -z "${KITE_DEMO_BIN_DIR:-}" ]; then
    echo "building Kite…" >&2
    if [ "$mode" = tui ]; then
        cargo build --release --locked -q -p kite-agent -p kite-tui --bin kite-agent --bin kite-tui
    else
        cargo build --release --locked -q -p kite-agent --bin kite-loader
    fi
fi

mount=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
[ -n "$mount" ] || { echo "demo.sh: no cgroup v2 hierarchy mounted" >&2; exit 1; }
cg="$mount/kite-demo-$$"
work=$(mktemp -d /tmp/kite-demo.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -d "$cg" ]; then
        for p in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
        sleep 0.2
        rmdir "$cg" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
mkdir -p "$cg"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
web=$(free_port)
upstream=$(free_port)

# The demo service: nginx with a fast page, a slower one (echo module) and an error.
cat >"$work/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
daemon off; master_process off; worker_processes 1; pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/b; proxy_temp_path $work/p; fastcgi_temp_path $work/f;
    uwsgi_temp_path $work/u; scgi_temp_path $work/s;
    server {
        listen 127.0.0.1:$web;
        location = /         { default_type text/plain; return 200 "hello from the Kite demo\n"; }
        location = /slow     { echo_sleep 0.02; echo "slow"; }
        location = /missing  { return 404; }
    }
}
CONF
sh -c "echo \$\$ > '$cg/cgroup.procs'; exec nginx -c '$work/nginx.conf'" &
pids+=($!)
# An upstream outside the cgroup, called from inside it (outbound traffic).
python3 testkit/servers/httpd.py 127.0.0.1 "$upstream" 2>/dev/null &
pids+=($!)
sleep 0.5

cat >"$work/mix.lua" <<'LUA'
local paths = {"/", "/", "/", "/slow", "/", "/", "/missing", "/", "/", "/",
               "/", "/", "/", "/", "/", "/", "/missing", "/", "/", "/"}
local n = 0
function request()
  n = n + 1
  return wrk.format(nil, paths[(n - 1) % #paths + 1])
end
LUA

rel=${cg#"$mount"}
if [ "$mode" = tui ]; then
    grpc=$(free_port)
    metrics=$(free_port)
    "$bin/kite-agent" --cgroup "$rel" --kube off --node-name demo \
        --grpc-addr "127.0.0.1:$grpc" --metrics-addr "127.0.0.1:$metrics" \
        --socket "$work/kite.sock" --state-dir "$work" 2>"$work/agent.log" &
    pids+=($!)
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$metrics/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    wrk -t2 -c8 -d120s -s "$work/mix.lua" "http://127.0.0.1:$web" >"$work/wrk.txt" 2>&1 &
    pids+=($!)
    sh -c "echo \$\$ > '$cg/cgroup.procs'; exec wrk -t1 -c2 -d120s http://127.0.0.1:$upstream/d/5" >"$work/wrk-out.txt" 2>&1 &
    pids+=($!)
    # Prometheus' view of the same numbers: curl http://127.0.0.1:$metrics/metrics
    "$bin/kite-tui" --addr "127.0.0.1:$grpc" || true
    exit 0
fi

echo "kite-loader measures cgroup $rel: nginx on 127.0.0.1:$web (in), calls to 127.0.0.1:$upstream (out)" >&2
"$bin/kite-loader" -s 2 -n 10 --cgroup "$rel" DEMO > >(tee "$work/loader.out") &
loader=$!
pids+=($loader)
# The verifier takes some seconds; measuring starts with the "measuring" line. Load starts
# after it: keep-alive connections opened before the programs attach are not all followed.
for _ in $(seq 600); do
    grep -q 'measuring cgroup' "$work/loader.out" 2>/dev/null && break
    kill -0 "$loader" 2>/dev/null || break
    sleep 0.1
done
wrk -t2 -c8 -d16s -s "$work/mix.lua" "http://127.0.0.1:$web" >"$work/wrk.txt" 2>&1 &
pids+=($!)
sh -c "echo \$\$ > '$cg/cgroup.procs'; exec wrk -t1 -c2 -d12s http://127.0.0.1:$upstream/d/5" >"$work/wrk-out.txt" 2>&1 &
pids+=($!)
wait "$loader" || true
echo >&2
echo "wrk's own view of the inbound load:" >&2
sed -n '1,12p' "$work/wrk.txt" >&2
