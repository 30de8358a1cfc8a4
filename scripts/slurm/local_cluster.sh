#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests (tests/test_slurm.py) and for trying the
# sbatch script by hand. Run as root:
#
#   scripts/slurm/local_cluster.sh start    # install slurm-wlm + munge if missing, write slurm.conf,
#                                           # start munged, slurmctld and slurmd, wait until the node is idle
#   scripts/slurm/local_cluster.sh stop     # cancel every job, stop the three daemons; nothing is left running
#   scripts/slurm/local_cluster.sh status   # the daemons' pids and `sinfo`
#
# The node is this host (`hostname -s`) with all of its CPUs, in one partition `debug`. The plugins need
# no cgroups (proctrack/linuxproc, task/none), so it also runs in containers; the node's CPUs are taken
# from slurm.conf, not from slurmd's hardware probe (SlurmdParameters=config_overrides). Daemon state, spool, logs
# and pid files live in $FTPROP_SLURM_DIR (default /tmp/ftprop-slurm); /etc/slurm/slurm.conf is written
# by this script and refused if someone else wrote it. KillWait is 5 s (SLURM's default is 30 s): the time a
# requeued job's processes get between SIGTERM and SIGKILL.
set -euo pipefail

STATE_DIR=${FTPROP_SLURM_DIR:-/tmp/ftprop-slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by lightning_ftprop scripts/slurm/local_cluster.sh"
MUNGE_PID=/run/munge/munged.pid
HOST=$(hostname -s)
CPUS=$(getconf _NPROCESSORS_ONLN)  # not nproc, which follows OMP_NUM_THREADS

die() {
    echo "local_cluster.sh: $*" >&2
    exit 1
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "slurm-wlm and munge are missing and apt-get is not available"
    echo "local_cluster.sh: installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge >/dev/null || {
        apt-get update -q >/dev/null
        apt-get install -y -q slurm-wlm munge >/dev/null
    }
}

write_conf() {
    if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; move it away first"
    fi
    mkdir -p /etc/slurm "$STATE_DIR/state" "$STATE_DIR/spool"
    cat >"$CONF.new" <<EOF
$MARKER
ClusterName=ftprop
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
NodeName=$HOST CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    if [[ -f $CONF ]] && cmp -s "$CONF" "$CONF.new"; then
        rm "$CONF.new"
        return
    fi
    stop_daemons  # running daemons would keep the old configuration
    mv "$CONF.new" "$CONF"
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
    alive "$MUNGE_PID" && return
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        chown munge:munge /etc/munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged
}

wait_idle() {
    local state=""
    for _ in $(seq 120); do
        state=$(sinfo -h -n "$HOST" -o "%T %c" 2>/dev/null || true)
        [[ $state == "idle $CPUS" ]] && return
        sleep 0.5
    done
    die "node $HOST is not idle with $CPUS CPUs after 60 s (sinfo says '${state}'); logs: $STATE_DIR/slurmctld.log, $STATE_DIR/slurmd.log"
}

start() {
    [[ $(id -u) == 0 ]] || die "must run as root (the daemons run as root; SlurmUser=root)"
    install_packages
    write_conf
    start_munge
    alive "$STATE_DIR/slurmctld.pid" || /usr/sbin/slurmctld -c
    alive "$STATE_DIR/slurmd.pid" || /usr/sbin/slurmd -c
    wait_idle
    # a one-task-per-CPU job step must run: proves munge, slurmctld and slurmd talk to each other
    timeout 60 srun --nodes=1 --ntasks="$CPUS" --time=1 true ||
        die "a test job step (srun -n $CPUS true) failed; logs: $STATE_DIR/slurmctld.log, $STATE_DIR/slurmd.log"
    echo "local_cluster.sh: node $HOST idle ($CPUS CPUs, partition debug); state in $STATE_DIR"
}

stop_pid() {  # stop_pid PIDFILE NAME: SIGTERM, wait up to 10 s, then SIGKILL
    local file=$1 pid
    [[ -f $file ]] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$file"
}

stop_daemons() {
    if alive "$STATE_DIR/slurmctld.pid"; then
        scancel --full --quiet --user=root 2>/dev/null || true
        for _ in $(seq 50); do  # let slurmd end the jobs' processes
            [[ -z $(squeue -h -t running,completing 2>/dev/null) ]] && break
            sleep 0.2
        done
    fi
    stop_pid "$STATE_DIR/slurmd.pid"
    stop_pid "$STATE_DIR/slurmctld.pid"
    stop_pid "$MUNGE_PID"
}

stop() {
    stop_daemons
    echo "local_cluster.sh: stopped"
}

status() {
    for f in "$MUNGE_PID" "$STATE_DIR/slurmctld.pid" "$STATE_DIR/slurmd.pid"; do
        if alive "$f"; then echo "running: $(basename "$f" .pid) (pid $(cat "$f"))"; else echo "stopped: $(basename "$f" .pid)"; fi
    done
    alive "$STATE_DIR/slurmctld.pid" && sinfo
    return 0
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
install) install_packages ;;
*) die "usage: local_cluster.sh start|stop|status|install (got '${1:-}')" ;;
esac
