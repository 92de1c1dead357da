# Sourced by run.sh: the simulated hosts. Every address lives only inside the namespaces made
# here (a switch namespace with a bridge, one namespace per host with a veth into it); nothing
# is added to the machine's own network namespace, so no packet leaves them.
#
# net_up N: hosts h1..hN at 10.231.0.1..N/24 (namespaces ${P}sw, ${P}h1, ...).
# net_down: removes them all (deleting a namespace deletes its links).
# link_down I / link_up I: cuts / restores host I's cable (both ends, at the switch).
# netem I DELAY: adds DELAY (e.g. 0.5ms) each way on host I's cable; returns 1 if unavailable.

P=${OFFLOAD_MH_PREFIX:?}
SUBNET=10.231.0

net_down() {
    local ns
    for ns in $(ip netns list | awk '{print $1}' | grep "^$P" || true); do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
}

net_up() {
    local n=$1 i
    ip netns add "${P}sw"
    ip -n "${P}sw" link add br0 type bridge
    ip -n "${P}sw" link set br0 up
    for i in $(seq 1 "$n"); do
        ip netns add "${P}h$i"
        ip -n "${P}h$i" link set lo up
        ip -n "${P}sw" link add "p$i" type veth peer name eth0 netns "${P}h$i"
        ip -n "${P}sw" link set "p$i" master br0 up
        ip -n "${P}h$i" addr add "$SUBNET.$i/24" dev eth0
        ip -n "${P}h$i" link set eth0 up
    done
}

link_down() { ip -n "${P}sw" link set "p$1" down; ip -n "${P}h$1" link set eth0 down; }
link_up() { ip -n "${P}sw" link set "p$1" up; ip -n "${P}h$1" link set eth0 up; }

netem() {
    tc -n "${P}h$1" qdisc add dev eth0 root netem delay "$2" 2>/dev/null || return 1
    tc -n "${P}sw" qdisc add dev "p$1" root netem delay "$2" 2>/dev/null || {
        tc -n "${P}h$1" qdisc del dev eth0 root 2>/dev/null
        return 1
    }
}

# on I CMD...: runs CMD on host I (its namespace and host name), as the launch agent does.
on() { local i=$1; shift; ip netns exec "${P}h$i" unshare --uts sh -c "hostname h$i && exec \"\$@\"" sh "$@"; }
