#!/usr/bin/env bash
# OpenMPI's launch agent for the simulated hosts (set as `plm_rsh_agent`): called as
# `agent.sh HOST COMMAND...` where ssh would be, it runs COMMAND in HOST's network namespace
# with that host's name (a UTS namespace of its own), as `ssh HOST COMMAND...` would on a real
# machine. HOST is an address from the hostfile (10.231.0.N -> namespace ${OFFLOAD_MH_PREFIX}hN).
set -euo pipefail
host=$1
shift
# OpenMPI may pass ssh-style options before the host; skip them.
while [[ $host == -* ]]; do host=$1; shift; done
n=${host##*.}
ns="${OFFLOAD_MH_PREFIX:?set by tests/multihost/run.sh}h$n"
# Like ssh: the arguments form one shell command line.
exec ip netns exec "$ns" unshare --uts sh -c "hostname h$n && $*"
