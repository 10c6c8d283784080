#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try the cluster path (profiles/slurm) on a
# laptop or in CI, and for tests/test_slurm.py.  Debian/Ubuntu, as root:
#
#   sudo tests/slurm/local_cluster.sh start    # install (apt) + start munge, slurmctld, slurmd
#   sudo tests/slurm/local_cluster.sh status   # sinfo; exit 0 when the node takes jobs
#   sudo tests/slurm/local_cluster.sh stop     # stop the daemons this script started
#
# The distribution's packages (slurmctld, slurmd, slurm-client, munge); one node with this
# machine's cores and memory, select/cons_tres (cores and memory are consumable), one
# default partition "cpu" without GPUs, no accounting daemon (slurmdbd), so job status
# comes from squeue only (profiles/slurm sets slurm-status-command: squeue).
# Idempotent: start on a running cluster only checks it; stop on a stopped one does nothing.
# It refuses to overwrite a /etc/slurm/slurm.conf it did not write (a real cluster's).
set -euo pipefail

PARTITION=cpu
CONF=/etc/slurm/slurm.conf
MARK="# Written by New-LLM tests/slurm/local_cluster.sh (one-node test cluster)."
STATE=/var/lib/newllm-slurm
RUN=/run/newllm-slurm
LOG=/var/log/newllm-slurm
PACKAGES=(slurmctld slurmd slurm-client munge)
WAIT_S=${LOCAL_CLUSTER_WAIT_S:-90}

say() { echo "local_cluster: $*"; }
die() {
    echo "local_cluster: error: $*" >&2
    exit 1
}

usage() {
    echo "usage: $0 start|stop|status" >&2
    exit 2
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts system daemons): sudo $0 $1"
}

node_name() { hostname -s; }

node_state() { sinfo --noheader --nodes "$(node_name)" --format %T 2>/dev/null | head -n1; }

cluster_answers() { command -v sinfo >/dev/null && scontrol ping 2>/dev/null | grep -q "is UP"; }

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null ||
        die "no apt-get: this script supports Debian/Ubuntu; install ${PACKAGES[*]} with your package manager and rerun"
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${PACKAGES[@]}" >"$LOG/apt.log" 2>&1; then
        say "apt-get install failed; running apt-get update and trying again"
        apt-get update >>"$LOG/apt.log" 2>&1 || true
        apt-get install -y --no-install-recommends "${PACKAGES[@]}" >>"$LOG/apt.log" 2>&1 ||
            die "apt-get install ${PACKAGES[*]} failed; see $LOG/apt.log:
$(tail -n 15 "$LOG/apt.log")"
    fi
}

write_config() {
    if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script (a real cluster's configuration?); refusing to overwrite it"
    fi
    local host node cpus_line
    host=$(node_name)
    # slurmd -C: this machine's CPUs, sockets, cores, threads and RealMemory (MB)
    node=$(slurmd -C | head -n1) || die "slurmd -C could not read this machine's hardware"
    [[ $node == NodeName=* ]] || die "unexpected slurmd -C output: $node"
    cpus_line=${node#NodeName=* }
    mkdir -p /etc/slurm
    cat >"$CONF" <<EOF
$MARK
# Stop it with: tests/slurm/local_cluster.sh stop.  Delete this file to use another config.
ClusterName=newllm-local
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
# no slurmdbd: sacct has nothing to read; finished jobs stay visible to squeue for MinJobAge
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmdTimeout=60
NodeName=$host NodeAddr=127.0.0.1 $cpus_line State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    say "wrote $CONF for node $host: $cpus_line"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "munge already running"
        return 0
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge /etc/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        runuser -u munge -- mungekey --create --keyfile /etc/munge/munge.key
    fi
    runuser -u munge -- munged || die "munged did not start; see /var/log/munge/munged.log"
    touch "$RUN/munge.started-here"
    for _ in $(seq 20); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "munge does not answer; see /var/log/munge/munged.log"
}

wait_idle() {
    local state="" node resumed=0
    node=$(node_name)
    for _ in $(seq "$WAIT_S"); do
        state=$(node_state || true)
        case $state in
        idle | mixed | allocated | completing) return 0 ;;
        down* | down | drained | draining | drain)
            if ((!resumed)); then
                scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
                resumed=1
            fi
            ;;
        esac
        sleep 1
    done
    echo "local_cluster: error: node $node is '${state:-not reported}' after ${WAIT_S}s" >&2
    sinfo -R 2>&1 | sed 's/^/  sinfo -R: /' >&2 || true
    for f in "$LOG/slurmctld.log" "$LOG/slurmd.log"; do
        [[ -f $f ]] && tail -n 10 "$f" | sed "s|^|  $(basename "$f"): |" >&2
    done
    exit 1
}

start() {
    need_root start
    mkdir -p "$STATE/slurmctld" "$STATE/slurmd" "$RUN" "$LOG"
    if cluster_answers && [[ $(node_state || true) =~ ^(idle|mixed|allocated|completing)$ ]]; then
        say "already running"
        sinfo
        return 0
    fi
    install_packages
    write_config
    start_munge
    if ! pid_alive "$RUN/slurmctld.pid"; then
        slurmctld || die "slurmctld did not start; see $LOG/slurmctld.log"
    fi
    for _ in $(seq 30); do
        scontrol ping 2>/dev/null | grep -q "is UP" && break
        sleep 0.5
    done
    scontrol ping 2>/dev/null | grep -q "is UP" ||
        die "slurmctld does not answer; see $LOG/slurmctld.log:
$(tail -n 10 "$LOG/slurmctld.log" 2>/dev/null)"
    if ! pid_alive "$RUN/slurmd.pid"; then
        slurmd || die "slurmd did not start; see $LOG/slurmd.log"
    fi
    wait_idle
    say "cluster up (partition $PARTITION):"
    sinfo
}

stop_pid() { # name pidfile
    pid_alive "$2" || return 0
    local pid
    pid=$(cat "$2")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 40); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.25
    done
    say "$1 (pid $pid) did not stop on SIGTERM; sending SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    need_root stop
    if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF was not written by this script; not stopping a cluster it did not start"
    fi
    if cluster_answers; then
        scancel --full --quiet --partition "$PARTITION" 2>/dev/null || true
    fi
    stop_pid slurmd "$RUN/slurmd.pid"
    stop_pid slurmctld "$RUN/slurmctld.pid"
    if [[ -f $RUN/munge.started-here ]]; then
        stop_pid munged /run/munge/munged.pid
        rm -f "$RUN/munge.started-here"
    fi
    say "stopped"
}

status() {
    if ! command -v sinfo >/dev/null; then
        say "not installed (no sinfo); start installs it"
        return 1
    fi
    if ! cluster_answers; then
        say "not running (scontrol ping: controller not answering)"
        return 1
    fi
    sinfo
    [[ $(node_state || true) =~ ^(idle|mixed|allocated|completing)$ ]]
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) status ;;
*) usage ;;
esac
