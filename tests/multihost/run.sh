#!/usr/bin/env bash
# The multi-host harness (issue 16): two simulated hosts, h1 and h2, each a network namespace
# with a host name of its own, joined by a bridge; OpenMPI starts its daemons on h2 through
# agent.sh (in place of ssh). Runs the MPI tests and examples with the ranks spread over both
# hosts, then the failure cases: a rank on h2 that dies, stops, or loses its link mid-task.
# Needs root (ip netns, unshare). Removes everything it made on exit, even after a failure.
#
#   tests/multihost/run.sh                    # after building the MPI tests (debug) and
#                                             # examples (release) with --features mpi
#   tests/multihost/run.sh SCENARIO...        # only some: tests examples die cut stop netem figures
set -euo pipefail
cd "$(dirname "$0")/../.."
here=tests/multihost
export OFFLOAD_MH_PREFIX="offload-mh-$$-"
# shellcheck source=net.sh
source "$here/net.sh"
trap 'net_down' EXIT
trap 'exit 130' INT TERM

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
hosts=$(mktemp)
trap 'net_down; rm -f "$hosts"' EXIT
printf '%s slots=2\n' "$SUBNET.1" "$SUBNET.2" >"$hosts"
# The settings the README recommends for multi-host runs (see there for why).
MCA=(--mca plm_rsh_agent "$PWD/$here/agent.sh"
    --mca oob_tcp_if_include "$SUBNET.0/24" --mca btl_tcp_if_include "$SUBNET.0/24"
    --mca oob_tcp_keepalive_time 1 --mca oob_tcp_keepalive_intvl 1 --mca oob_tcp_keepalive_probes 2)
# mpirun N LIMIT ARGS...: mpiexec on h1 with N ranks spread one per host in turn, under a
# time limit. --bind-to none: each simulated host would bind its first rank to core 0, and
# the ranks of both "hosts" would then share one real core (see the README: that, not the
# network, is what made a raw MPI ping-pong take 8 ms here).
mpirun() {
    local n=$1 limit=$2
    shift 2
    on 1 timeout -k 5 "$limit" mpiexec --hostfile "$hosts" --map-by node --bind-to none \
        -n "$n" --oversubscribe "${MCA[@]}" "$@"
}
# The processes left in the simulated hosts (none once a job has ended).
leftovers() { local i; for i in 1 2; do ip netns pids "${OFFLOAD_MH_PREFIX}h$i"; done; }

test_bin() {
    cargo test --features mpi --test "$1" --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$1"
}

net_up 2
on 1 hostname >/dev/null

# scenario MODE: a rank on h2 dies / stops / loses its link mid-task (tests/mpi_remote_rank.rs).
# Passes when rank 0 reports it and serves on, and every process of the job, on both hosts,
# has ended within 10 s of the failure. OpenMPI's own complaints go to a log, shown on failure.
scenario() {
    local mode=$1 bin rc=0 log acts end
    bin=$(test_bin mpi_remote_rank)
    log=target/multihost-$mode.log
    # A stopped (frozen) rank: under --enable-recovery OpenMPI 4.1 waits for it for ever, even
    # after rank 0's MPI_Abort; without it, that abort ends the job (see the README).
    local recovery=--enable-recovery
    [ "$mode" = stop ] && recovery=
    mpirun 4 40 $recovery "$bin" "$mode" >"$log" 2>&1 || rc=$?
    end=$(date +%s%3N)
    grep -E '^(test |  (die|cut|stop): )' "$log" || true
    # With a host cut off, mpiexec loses its daemon there and says so with status 1 (and a
    # misleading "unable to reliably start one or more daemons"): the job still ended.
    local ok_rc=0
    [ "$mode" = cut ] && ok_rc=1
    if ! grep -q "^test remote_rank_${mode}_is_reported ... ok" "$log" ||
        { [ "$rc" -ne 0 ] && [ "$rc" -ne "$ok_rc" ]; }; then
        cat "$log"
        echo "FAILED: $mode (status $rc)"
        return 1
    fi
    acts=$(sed -n 's/^remote ranks act at unix ms //p' "$log")
    echo "== $mode: the job ended $((end - acts)) ms after the failure, status $rc"
    if ((end - acts > 10000)); then echo "FAILED: $mode: the job ended too late"; return 1; fi
    # Ranks and daemons cut off from mpiexec end by themselves: wait up to the same bound.
    while [ -n "$(leftovers)" ] && (($(date +%s%3N) - acts < 10000)); do sleep 0.1; done
    if [ -n "$(leftovers)" ]; then echo "FAILED: processes left after $mode: $(leftovers)"; return 1; fi
    echo "== $mode: every process on every host ended $(($(date +%s%3N) - acts)) ms after the failure"
    link_up 2
}

# check NAME FILE PATTERN: FILE has a line matching PATTERN, else show FILE and fail.
check() {
    if grep -qE "$3" "$2"; then echo "ok: $1"; else cat "$2"; echo "FAILED: $1"; return 1; fi
}

# The MPI tests and examples with their ranks spread over both hosts (--map-by node: rank 0 on
# h1, rank 1 on h2, rank 2 on h1, ...). Tests are the debug builds cargo made; examples the
# release builds in target/release/examples.
run_tests() {
    local log=target/multihost-tests.log
    mpirun 4 120 "$(test_bin mpi_cluster)" >"$log" 2>&1
    check "mpi_cluster on 4 ranks over 2 hosts" "$log" '^mpi_cluster: all tests passed on 4 ranks'
    mpirun 3 60 --enable-recovery "$(test_bin mpi_dead_rank)" >"$log" 2>&1
    check "mpi_dead_rank over 2 hosts" "$log" '^mpi_dead_rank: done'
    mpirun 3 60 "$(test_bin mpi_shutdown_kill)" >"$log" 2>&1
    check "mpi_shutdown_kill over 2 hosts" "$log" '^mpi_shutdown_kill: done'
}

run_examples() {
    local ex=target/release/examples log=target/multihost-examples.log
    mpirun 4 120 "$ex/mpi_primes" >"$log" 2>&1
    check "mpi_primes on 4 ranks over 2 hosts" "$log" '^tier: cluster \(3 workers\)'
    check "mpi_primes sums" "$log" '^sum of primes below 100700: 460217613$'
    mpirun 3 120 "$ex/mpi_pi" >"$log" 2>&1
    check "mpi_pi over 2 hosts" "$log" '^pi: 3\.14'
}

# Figures (issue 16 item 4): round trip across hosts against raw TCP and raw MPI, same run;
# the same on one host; mpi_primes on one host and on two.
figures() {
    local ex=target/release/examples rounds=${ROUNDS:-2000}
    echo "-- round trip, rank 0 on h1, rank 1 on h2"
    mpirun 2 120 "$ex/mpi_roundtrip" "$rounds" --tcp "$SUBNET.2" 2>&1 | grep -E 'ratio|median'
    echo "-- round trip, both ranks on h1"
    on 1 timeout -k 5 120 mpiexec --host "$SUBNET.1:2" -n 2 "${MCA[@]}" \
        "$ex/mpi_roundtrip" "$rounds" --tcp 127.0.0.1 2>&1 | grep -E 'ratio|median'
    echo "-- mpi_primes, 3 ranks on h1 / over h1 and h2"
    on 1 timeout -k 5 120 mpiexec --host "$SUBNET.1:3" -n 3 "${MCA[@]}" "$ex/mpi_primes" 2>&1 | grep took
    mpirun 3 120 "$ex/mpi_primes" 2>&1 | grep took
}

# With 0.5 ms added each way on h2's cable (1 ms round trip), when the kernel has sch_netem.
netem_run() {
    if ! netem 2 0.5ms; then
        echo "netem: tc netem is not available in this kernel (sch_netem); skipped"
        return 0
    fi
    echo "-- round trip at 1 ms RTT, rank 0 on h1, rank 1 on h2"
    mpirun 2 120 target/release/examples/mpi_roundtrip 500 --tcp "$SUBNET.2" 2>&1 |
        grep -E 'ratio|median'
}

[ $# -eq 0 ] && set -- tests examples die cut stop netem
for s in "$@"; do
    case $s in
    tests) run_tests ;;
    examples) run_examples ;;
    figures) figures ;;
    netem) netem_run ;;
    die | stop | cut) scenario "$s" ;;
    *) echo "unknown scenario $s"; exit 2 ;;
    esac
done
echo "multihost: all passed"
