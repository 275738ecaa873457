#!/usr/bin/env bash
# A single-node Slurm cluster with accounting (munge, MariaDB, slurmdbd, slurmctld, slurmd) from Debian packages,
# for CI and for trying bench's Slurm executor on one machine. Idempotent: a re-run starts only what is not running.
#
# usage (as root): scripts/slurm/setup.sh [up|down|status]        (default: up)
#   up      install missing packages, write the configuration, start what is not running, wait for an idle node
#   down    stop the daemons (by pid file) and delete the state folder (kept with SLURM_LOCAL_KEEP=1)
#   status  which daemons run, and sinfo
# environment:
#   SLURM_LOCAL_DIR   configuration, state, logs and sockets (default /tmp/slurm-local); only apt writes elsewhere
#   SLURM_LOCAL_CPUS  CPUs the node advertises (default: the hardware's); more than the hardware oversubscribes
#   SLURM_LOCAL_KEEP  1: `down` keeps the state folder, so job ids and sacct history carry on after the next `up`
# Every Slurm client (sbatch, sacct, submitit, pytest) needs SLURM_CONF=$SLURM_LOCAL_DIR/etc/slurm.conf; `up`
# writes that export line to $SLURM_LOCAL_DIR/env.sh.
#
# Why the configuration looks as it does (measured on a 2-core Debian 12 VM without systemd):
# - submitit reads job states only through sacct, so accounting (slurmdbd + MariaDB) is required: without it a
#   cancelled or timed-out job never counts as done and job.result() waits forever.
# - The private munge socket is named in AuthInfo and again in AccountingStoragePass (the slurmdbd connection
#   ignores AuthInfo); munged runs as the munge user with a 0400 key in a 0755 folder.
# - cred_expire=10 and sched_interval=1: a requeued job otherwise waits 120 s (BeginTime) plus a 60 s pass.
# - batch_sched_delay=0: otherwise every sbatch waits about 3 s.
# - EnforcePartLimits=ALL: an impossible request (more CPUs than the node) fails at sbatch instead of pending forever.
# - proctrack/linuxproc and task/none: no dependence on the host's cgroups (so memory/CPU limits are not enforced).
# - The node's CPUs and memory come from `slurmd -C` (90 % of RAM): larger values mark the node INVAL.
set -euo pipefail
# The daemons (slurmctld, slurmd, slurmdbd, munged, mysqld) live in /usr/sbin, which a non-login or minimal PATH
# (env -i, a plain user's) lacks: `slurmd -C` then failed and the cluster never came up.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH=$PATH:/usr/sbin:/sbin ;; esac
export PATH

D=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONF=$D/etc/slurm.conf
CLUSTER=localcluster
PARTITION=debug
DB_PORT=3307
DB_PASSWORD=slurmlocal
HOST=$(hostname -s)
PACKAGES=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)
MARKER=$D/.slurm-local
START=$(date +%s.%N)
export SLURM_CONF=$CONF

say() { printf '[slurm-local %5.1fs] %s\n' "$(awk -v s="$START" -v n="$(date +%s.%N)" 'BEGIN{print n-s}')" "$*"; }
die() { say "ERROR: $*" >&2; exit 1; }

# Whether the process named in pid file $1 runs and is $2 (a zombie counts as dead: PID 1 may reap orphans late).
alive() {
    local pid state
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/stat ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "${2:0:15}" ]] || return 1
    state=$(sed 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
    [[ $state != Z ]]
}

# wait_for DESCRIPTION SECONDS COMMAND...: retry COMMAND every 0.2 s until it succeeds, or fail naming the log.
wait_for() {
    local what=$1 limit=$2 tries
    shift 2
    for ((tries = 0; tries < limit * 5; tries++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "$what did not come up within ${limit}s; see the logs in $D/log and $D/mysqlrun"
}

# stop PIDFILE NAME: TERM, wait up to 15 s, then KILL.
stop() {
    alive "$1" "$2" || return 0
    local pid tries
    pid=$(<"$1")
    kill -TERM "$pid" 2>/dev/null || true
    for ((tries = 0; tries < 75; tries++)); do
        alive "$1" "$2" || { say "stopped $2 ($pid)"; return 0; }
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    say "killed $2 ($pid)"
}

install_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Fill the @NAME@ placeholders of template $1 and write it to $2 (mode $3, owner $4); sets CHANGED=1 on a change.
render() {
    local text
    text=$(<"$1")
    text=${text//@DIR@/$D}
    text=${text//@HOST@/$HOST}
    text=${text//@CLUSTER@/$CLUSTER}
    text=${text//@PARTITION@/$PARTITION}
    text=${text//@CPUS@/$CPUS}
    text=${text//@MEMORY@/$MEMORY}
    text=${text//@SLURMD_PARAMETERS@/$SLURMD_PARAMETERS}
    text=${text//@DB_PORT@/$DB_PORT}
    text=${text//@DB_PASSWORD@/$DB_PASSWORD}
    if [[ ! -f $2 ]] || [[ $(<"$2") != "$text" ]]; then
        printf '%s\n' "$text" >"$2"
        CHANGED=1
    fi
    chmod "$3" "$2"
    chown "$4" "$2"
}

prepare_folders() {
    mkdir -p "$D"/{etc,state,spool,run,log,munge,mysql,mysqlrun}
    touch "$MARKER"
    chmod 0755 "$D" "$D/munge"
    chown slurm:slurm "$D/state" "$D/run" "$D/log"
    chown munge:munge "$D/munge"
    chown mysql:mysql "$D/mysql" "$D/mysqlrun"
    if [[ ! -s $D/munge/munge.key ]]; then
        dd if=/dev/urandom of="$D/munge/munge.key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$D/munge/munge.key"
    chmod 0400 "$D/munge/munge.key"
}

write_config() {
    local hw
    hw=$(env -u SLURM_CONF slurmd -C 2>/dev/null | head -1)
    CPUS=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    MEMORY=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    [[ -n $CPUS && -n $MEMORY ]] || die "slurmd -C did not report CPUs and RealMemory: '$hw'"
    MEMORY=$((MEMORY * 9 / 10))
    SLURMD_PARAMETERS=""
    if [[ -n ${SLURM_LOCAL_CPUS:-} && ${SLURM_LOCAL_CPUS} != "$CPUS" ]]; then
        CPUS=$SLURM_LOCAL_CPUS
        SLURMD_PARAMETERS="SlurmdParameters=config_overrides"
    fi
    CHANGED=0
    render "$HERE/slurm.conf.in" "$CONF" 0644 root:root
    render "$HERE/slurmdbd.conf.in" "$D/etc/slurmdbd.conf" 0600 slurm:slurm
    printf 'export SLURM_CONF=%s\n' "$CONF" >"$D/env.sh"
}

start_munge() {
    alive "$D/munge/munged.pid" munged && return 0
    rm -f "$D/munge/munge.socket" "$D/munge/munge.socket.lock"
    runuser -u munge -- munged --socket="$D/munge/munge.socket" --key-file="$D/munge/munge.key" \
        --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log" --seed-file="$D/munge/munged.seed"
    wait_for munged 10 test -S "$D/munge/munge.socket"
    say "started munged"
}

start_database() {
    local sql=(mariadb --no-defaults -uroot --socket="$D/mysqlrun/mysqld.sock")
    if [[ ! -d $D/mysql/mysql ]]; then
        mariadb-install-db --no-defaults --user=mysql --datadir="$D/mysql" --auth-root-authentication-method=socket \
            --skip-test-db >"$D/mysqlrun/install.log" 2>&1 || die "mariadb-install-db failed; see $D/mysqlrun/install.log"
    fi
    if ! alive "$D/mysqlrun/mariadbd.pid" mariadbd; then
        setsid mariadbd --no-defaults --user=mysql --datadir="$D/mysql" --socket="$D/mysqlrun/mysqld.sock" \
            --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$D/mysqlrun/mariadbd.pid" \
            --log-error="$D/mysqlrun/mariadbd.err" --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
            </dev/null >/dev/null 2>&1 &
        wait_for MariaDB 60 "${sql[@]}" -e 'SELECT 1'
        say "started mariadbd"
    fi
    "${sql[@]}" <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL
}

start_slurmdbd() {
    if ! alive "$D/run/slurmdbd.pid" slurmdbd; then
        slurmdbd  # no -f: it reads slurmdbd.conf next to $SLURM_CONF
        say "started slurmdbd"
    fi
    wait_for slurmdbd 30 sacctmgr -n -P list cluster
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null  # must exist before slurmctld registers
        say "registered cluster $CLUSTER"
    fi
}

start_slurm() {
    if ((CHANGED)); then  # AuthInfo (cred_expire) needs a restart; `scontrol reconfigure` is not enough
        stop "$D/run/slurmd.pid" slurmd
        stop "$D/run/slurmctld.pid" slurmctld
    fi
    if ! alive "$D/run/slurmctld.pid" slurmctld; then
        slurmctld -f "$CONF"
        say "started slurmctld"
    fi
    wait_for slurmctld 30 scontrol ping
    if ! alive "$D/run/slurmd.pid" slurmd; then
        slurmd -f "$CONF" -N "$HOST"
        say "started slurmd"
    fi
    local state tries
    for ((tries = 0; tries < 300; tries++)); do
        state=$(sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -1)
        case $state in
            idle | mixed | allocated | completing) say "node $HOST is $state"; return 0 ;;
            down* | drain* | drained*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.2
    done
    die "node $HOST did not become idle (state '$state'); see $D/log/slurmd.log and slurmctld.log"
}

up() {
    [[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts daemons as the slurm, munge and mysql users)"
    install_packages
    prepare_folders
    write_config
    start_munge
    start_database
    start_slurmdbd
    start_slurm
    say "ready: export SLURM_CONF=$CONF   (or: . $D/env.sh)"
}

down() {
    stop "$D/run/slurmd.pid" slurmd
    stop "$D/run/slurmctld.pid" slurmctld
    stop "$D/run/slurmdbd.pid" slurmdbd
    stop "$D/mysqlrun/mariadbd.pid" mariadbd
    stop "$D/munge/munged.pid" munged
    if [[ ${SLURM_LOCAL_KEEP:-0} != 1 && -f $MARKER ]]; then
        rm -rf "$D"
        say "removed $D"
    fi
}

status() {
    local name pidfile
    for name in munged:munge/munged.pid mariadbd:mysqlrun/mariadbd.pid slurmdbd:run/slurmdbd.pid \
        slurmctld:run/slurmctld.pid slurmd:run/slurmd.pid; do
        pidfile=$D/${name#*:}
        if alive "$pidfile" "${name%%:*}"; then echo "${name%%:*}: running ($(<"$pidfile"))"; else echo "${name%%:*}: stopped"; fi
    done
    alive "$D/run/slurmctld.pid" slurmctld && sinfo
    return 0
}

case ${1:-up} in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 [up|down|status]" >&2; exit 2 ;;
esac
