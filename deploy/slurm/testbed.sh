#!/bin/bash
# A real single-node SLURM on this machine, for testing cwredis' SLURM deployment.
#
#   deploy/slurm/testbed.sh start    install (if missing, as root) and start munged, slurmctld, slurmd
#   deploy/slurm/testbed.sh stop     cancel the testbed's jobs, stop the daemons it started
#   deploy/slurm/testbed.sh status   daemons, sinfo; exit 0 only when the node is usable
#   deploy/slurm/testbed.sh env      print `export SLURM_CONF=...` (exit 1 if never started)
#
# Everything lives under one state dir: $CWREDIS_SLURM_TESTBED (default
# /tmp/cwredis-slurm-testbed). `start` and `stop` are idempotent. `start`,
# `status` and `env` print `export SLURM_CONF=DIR/etc/slurm.conf` on stdout
# (all other output goes to stderr), so `eval "$(deploy/slurm/testbed.sh start)"`
# works.
#
# Why each slurm.conf line is there: /work/shared/SLURM-TESTBED.md. The node
# advertises $CWREDIS_SLURM_CPUS CPUs (default 8, more than the machine has,
# thanks to SlurmdParameters=config_overrides) so that one allocation fits a
# coordinator step plus several worker steps; nothing enforces CPUs here.
#
# Daemons run under setsid with their PIDs recorded in DIR/run/*.pid; `stop`
# signals those PIDs only (after checking they still are the daemon), never
# processes found by name.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin  # the daemons live there; a user's PATH may lack it

DIR=${CWREDIS_SLURM_TESTBED:-/tmp/cwredis-slurm-testbed}
CPUS=${CWREDIS_SLURM_CPUS:-8}
NODE=$(hostname -s)
CONF=$DIR/etc/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket

log() { echo "testbed: $*" >&2; }
die() { echo "testbed: $*" >&2; exit 1; }

# The PID recorded in DIR/run/NAME.pid if that process is alive and still runs
# the expected program (guards against a recycled PID after a reboot).
live_pid() {
    local name=$1 pidfile=$DIR/run/$1.pid pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$name" || return 1
    echo "$pid"
}

ensure_installed() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurm-wlm)
    command -v munged >/dev/null || missing+=(munge)
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) == 0 ]] || die "${missing[*]} not installed and not root: apt-get install -y slurm-wlm munge"
    command -v apt-get >/dev/null || die "${missing[*]} not installed and no apt-get"
    log "installing slurm-wlm munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq slurm-wlm munge >&2
}

write_config() {
    mkdir -p "$DIR"/{etc,state,run,log,munge,munge-key,spool/"$NODE"}
    # munged refuses a socket dir that is not 711 under a 755 parent, and a
    # key readable by others.
    chmod 755 "$DIR"
    chmod 711 "$DIR/munge"
    chmod 700 "$DIR/munge-key"
    if [[ ! -s $DIR/munge-key/munge.key ]]; then
        dd if=/dev/urandom bs=1 count=1024 of="$DIR/munge-key/munge.key" status=none
    fi
    chmod 400 "$DIR/munge-key/munge.key"
    : >"$DIR/etc/plugstack.conf"
    cat >"$CONF" <<EOF
# Written by deploy/slurm/testbed.sh; regenerated on every start.
ClusterName=testcluster
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=6817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.daemon.pid
SlurmdPidFile=$DIR/run/slurmd.%n.daemon.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.%n.log
PlugStackConfig=$DIR/etc/plugstack.conf
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
EnforcePartLimits=ALL
SlurmdParameters=config_overrides
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE Port=6818 CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# spawn NAME CMD...: start CMD in its own session, record its PID.
spawn() {
    local name=$1
    shift
    # Not a process-group leader (no job control in a script), so setsid
    # execs in place and $! is the daemon's own PID.
    setsid "$@" </dev/null >>"$DIR/log/$name.out" 2>&1 &
    echo $! >"$DIR/run/$name.pid"
}

wait_for() {
    local what=$1 tries=$2
    shift 2
    for ((i = 0; i < tries; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$what did not come up; logs in $DIR/log"
}

node_idle() {
    SLURM_CONF=$CONF sinfo -h -o %t 2>/dev/null | grep -Eq '^(idle|mix|alloc)'
}

start() {
    ensure_installed
    if live_pid munged >/dev/null && live_pid slurmctld >/dev/null && live_pid slurmd >/dev/null && node_idle; then
        log "already running in $DIR"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    stop_daemons  # a partial testbed: start again from scratch
    write_config
    spawn munged munged -F --force --socket="$MUNGE_SOCKET" \
        --key-file="$DIR/munge-key/munge.key" --pid-file="$DIR/run/munged.daemon.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
    wait_for munged 50 munge -n -S "$MUNGE_SOCKET"
    spawn slurmctld slurmctld -D -c -f "$CONF"
    wait_for slurmctld 100 env SLURM_CONF="$CONF" scontrol ping
    spawn slurmd slurmd -D -f "$CONF" -N "$NODE"
    wait_for "node $NODE (idle)" 150 node_idle
    log "SLURM up in $DIR: node $NODE, $CPUS CPUs, partition debug"
    echo "export SLURM_CONF=$CONF"
}

# stop_daemons: TERM every recorded daemon at once (each takes 1-2 s to
# exit), wait up to 10 s, then KILL what is left of them.
stop_daemons() {
    local name pid pids=()
    for name in slurmd slurmctld munged; do
        if pid=$(live_pid "$name"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    for ((i = 0; i < 100 && ${#pids[@]} > 0; i++)); do
        local alive=()
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive+=("$pid")
        done
        pids=("${alive[@]}")
        if ((${#pids[@]} > 0)); then sleep 0.1; fi
    done
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -f "$DIR"/run/{slurmd,slurmctld,munged}.pid
}

stop() {
    if live_pid slurmctld >/dev/null; then
        # Cancel the testbed's own jobs (this cluster only) so their steps'
        # processes end; slurmstepd outlives slurmd otherwise.
        local jobs
        jobs=$(SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086
            SLURM_CONF=$CONF scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 100; i++)); do
                [[ -z $(SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null) ]] && break
                sleep 0.1
            done
        fi
    fi
    stop_daemons
    log "stopped ($DIR)"
}

status() {
    local ok=0 name pid
    for name in munged slurmctld slurmd; do
        if pid=$(live_pid "$name"); then
            log "$name: running (pid $pid)"
        else
            log "$name: not running"
            ok=1
        fi
    done
    if ((ok == 0)) && node_idle; then
        SLURM_CONF=$CONF sinfo >&2
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    return 1
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) [[ -s $CONF ]] || die "no $CONF: run start first"; echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
