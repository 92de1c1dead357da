#!/usr/bin/env bash
# Load test of the HTTP example (examples/http_server.rs) under each placement policy.
#
# For each policy the service runs alone on loopback while two wrk instances drive it at once:
#   - the mix: $CONNS connections sending the showcase's request mix back to back
#     (70 % /primes?n=300, 20 % /hash?bytes=2000, 8 % /primes?n=30000, 2 % /hash?bytes=4000000);
#   - the probe: $PROBE_CONNS connections sending only cheap requests (/primes?n=300), one every
#     $PROBE_EVERY_MS ms each (paced, so that a fast policy does not make the probe a second
#     load), whose latency is what every other user of the service feels.
# Policies run in turn, $ROUNDS rounds (so that a change in the machine's load falls on every
# policy alike); each figure is the median over the rounds. It prints the showcase's table
# (cheap p50 / p99, requests/s of the mix answered 2xx) and the ratios of adaptive to its peers.
#
#   benches/http_load.sh                       # 3 rounds of 5 s per policy: about a minute
#   ROUNDS=1 DURATION=2 benches/http_load.sh   # a quick look
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-16}
PROBE_CONNS=${PROBE_CONNS:-4}
PROBE_EVERY_MS=${PROBE_EVERY_MS:-5}
# 0: an ephemeral port, read from the server's first line.
PORT=${PORT:-0}
POLICIES=(inline offload adaptive)

if ! command -v wrk >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends wrk
fi

cargo build --release --example http_server
bin=target/release/examples/http_server
work=$(mktemp -d)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/mix.lua" <<'LUA'
local paths = {}
local function add(path, weight)
    for _ = 1, weight do paths[#paths + 1] = path end
end
add("/primes?n=300", 70)
add("/hash?bytes=2000", 20)
add("/primes?n=30000", 8)
add("/hash?bytes=4000000", 2)
local seed = 0
setup = function(thread)
    seed = seed + 1
    thread:set("seed", seed)
end
init = function()
    math.randomseed(os.time() + (seed or 0))
end
request = function()
    return wrk.format("GET", paths[math.random(#paths)])
end
LUA

cat >"$work/probe.lua" <<LUA
delay = function()
    return $PROBE_EVERY_MS
end
LUA

for round in $(seq 1 "$ROUNDS"); do
    for policy in "${POLICIES[@]}"; do
        log="$work/server-$policy-$round.log"
        RUST_LOG=warn "$bin" --addr "127.0.0.1:$PORT" --policy "$policy" >"$log" 2>&1 &
        server_pid=$!
        for _ in $(seq 1 100); do
            grep -q "http server on" "$log" && break
            sleep 0.1
        done
        grep -q "http server on" "$log" || { cat "$log"; echo "the server did not start" >&2; exit 1; }
        url=$(grep -o "http server on http://[0-9.:]*" "$log" | head -1 | sed 's/^http server on //')
        # Warm-up: the adaptive model learns the routes' costs.
        wrk -t1 -c"$CONNS" -d1s -s "$work/mix.lua" "$url" >/dev/null
        wrk -t2 -c"$CONNS" -d"${DURATION}s" -s "$work/mix.lua" "$url" >"$work/mix-$policy-$round.txt" &
        mix_pid=$!
        wrk -t1 -c"$PROBE_CONNS" -d"${DURATION}s" --latency -s "$work/probe.lua" "$url/primes?n=300" >"$work/probe-$policy-$round.txt"
        wait "$mix_pid"
        kill -TERM "$server_pid"
        wait "$server_pid" || { echo "the $policy server exited with $?" >&2; cat "$log"; exit 1; }
        server_pid=""
        echo "round $round/$ROUNDS: $policy done" >&2
    done
done

python3 - "$work" "$ROUNDS" "${POLICIES[@]}" <<'PY'
import re, statistics, sys
work, rounds, policies = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
unit = {"us": 1, "ms": 1e3, "s": 1e6}

def latency(text, pct):
    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    return float(m.group(1)) * unit[m.group(2)] if m else float("nan")

def rps(text):
    """Answered requests per second: wrk's count less the non-2xx answers (a shed request is
    not work done)."""
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", text)
    if not m:
        return float("nan")
    secs = float(m.group(2)) * {"ms": 1e-3, "s": 1, "m": 60}[m.group(3)]
    return (int(m.group(1)) - non2xx(text)) / secs

def non2xx(text):
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return int(m.group(1)) if m else 0

rows = {}
for p in policies:
    p50, p99, r, bad = [], [], [], 0
    for i in range(1, rounds + 1):
        probe = open(f"{work}/probe-{p}-{i}.txt").read()
        mix = open(f"{work}/mix-{p}-{i}.txt").read()
        p50.append(latency(probe, 50))
        p99.append(latency(probe, 99))
        r.append(rps(mix))
        bad += non2xx(mix) + non2xx(probe)
    rows[p] = (statistics.median(p50), statistics.median(p99), statistics.median(r), bad)
    print(f"{p:>9}: cheap p99 per round {', '.join(f'{x:.0f}' for x in p99)} µs; "
          f"req/s per round {', '.join(f'{x:.0f}' for x in r)}")

print()
print(f"{'policy':>9} | {'cheap p50':>10} | {'cheap p99':>10} | {'mix req/s':>10} | non-2xx (not in req/s)")
print("-" * 9 + "-+-" + "-+-".join("-" * 10 for _ in range(3)) + "-+--------")
for p, (a, b, c, bad) in rows.items():
    print(f"{p:>9} | {a:>7.0f} µs | {b:>7.0f} µs | {c:>10.0f} | {bad}")
print(f"(medians of {rounds} rounds; mix and probe run at once)")
if all(p in rows for p in ("inline", "offload", "adaptive")):
    ad, off, inl = rows["adaptive"], rows["offload"], rows["inline"]
    p99_ratio = ad[1] / off[1]
    best = max(inl[2], off[2])
    rps_ratio = ad[2] / best
    print(f"adaptive cheap p99 / offload's: {p99_ratio:.2f} (floor: <= 1.2) "
          f"{'ok' if p99_ratio <= 1.2 else 'MISSED'}")
    print(f"adaptive req/s / best of inline and offload: {rps_ratio:.2f} (floor: >= 0.95) "
          f"{'ok' if rps_ratio >= 0.95 else 'MISSED'}")
PY
