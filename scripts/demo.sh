#!/usr/bin/env bash
# Kite's local demo: nginx in a cgroup of its own, bounded wrk load at it (and, from inside
# the cgroup, calls out to a Python upstream), and kite-loader measuring the cgroup with eBPF.
# Runs about 25 seconds, then cleans up everything it started. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh: run as root (loading eBPF programs and making cgroups need it)" >&2
    exit 1
fi
scripts/install-deps.sh
# shellcheck disable=SC1091
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
echo "building kite-loader…" >&2
cargo build --release --locked -q -p kite-agent --bin kite-loader

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
python3 agent/tests/kernel/servers/httpd.py 127.0.0.1 "$upstream" 2>/dev/null &
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

echo "kite-loader measures cgroup ${cg#"$mount"}: nginx on 127.0.0.1:$web (in), calls to 127.0.0.1:$upstream (out)" >&2
"$root/target/release/kite-loader" -s 2 -n 10 --cgroup "${cg#"$mount"}" DEMO &
loader=$!
pids+=($loader)
sleep 3   # the verifier takes a moment; measuring starts when the first line appears
wrk -t2 -c8 -d16s -s "$work/mix.lua" "http://127.0.0.1:$web" >"$work/wrk.txt" 2>&1 &
pids+=($!)
sh -c "echo \$\$ > '$cg/cgroup.procs'; exec wrk -t1 -c2 -d12s http://127.0.0.1:$upstream/d/5" >"$work/wrk-out.txt" 2>&1 &
pids+=($!)
wait "$loader" || true
echo >&2
echo "wrk's own view of the inbound load:" >&2
sed -n '1,12p' "$work/wrk.txt" >&2
