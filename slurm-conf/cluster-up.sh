#!/usr/bin/env bash
# Bring up the NØMADE single-host Slurm development cluster (Slurm 22.05, Debian 12):
# munged, mariadbd, slurmdbd, slurmctld and two slurmd (node1, node2) on one host,
# started by hand (no systemd). Run as root. Idempotent: a running cluster is left
# alone, a partly running one is completed.
#
#   NOMADE_CLUSTER_DIR   run dir for PIDs, logs and Slurm state [/var/lib/nomade-cluster]
#   NOMADE_CLUSTER_WAIT  seconds to wait for each daemon          [60]
#
#   --hooks-changed      run after `nomadectl install-hooks --include /etc/slurm/nomade-hooks.conf`:
#                        restarts slurmctld when it was started without PrologSlurmctld.  Slurm
#                        22.05 decides when slurmctld starts whether to run PrologSlurmctld and
#                        EpilogSlurmctld at all; `scontrol reconfigure` adds them to the
#                        configuration it shows but never runs them.  Running jobs survive.
#
# Layout of the run dir:
#   pids/<daemon>.pid  PIDs recorded by this script (cluster-down.sh reads them)
#   log/<daemon>.log   stdout+stderr of each daemon (all run in the foreground);
#                      for slurmd: log/slurmd-<node>.stderr, and log/slurmd-<node>.log
#                      is its SlurmdLogFile (slurmstepd logs there too)
#   run/               PID files the Slurm daemons write themselves (owner slurm)
#   state/             slurmctld StateSaveLocation;  spool/<node>/  SlurmdSpoolDir
#   db.pass            password of the MariaDB user `slurm` (mode 600)
#   slurmctld.prep     1 when slurmctld was started with PrologSlurmctld configured, else 0
set -euo pipefail

HOOKS_CHANGED=0
for arg in "$@"; do
    case $arg in
    --hooks-changed) HOOKS_CHANGED=1 ;;
    *)
        printf 'cluster-up: ERROR: unknown argument %s (expected --hooks-changed or nothing)\n' "$arg" >&2
        exit 2
        ;;
    esac
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_DIR=${NOMADE_CLUSTER_DIR:-/var/lib/nomade-cluster}
WAIT_S=${NOMADE_CLUSTER_WAIT:-60}
ETC=/etc/slurm
HOOKS_CONF=$ETC/nomade-hooks.conf
CLUSTER=nomadedev
MYSQL_SOCK=/run/mysqld/mysqld.sock
MYSQL_DATADIR=/var/lib/mysql
MUNGE_SOCK=/run/munge/munge.socket.2
NODES=(node1 node2)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd-node1 slurmd-node2)
T0=$SECONDS

say() { printf 'cluster-up: %s\n' "$*"; }

# die LOG MESSAGE: print the message and the tail of LOG (if any), exit 1.
die() {
    local log=$1
    shift
    printf 'cluster-up: ERROR: %s\n' "$*" >&2
    if [[ -n $log && -f $log ]]; then
        printf -- '--- last 30 lines of %s ---\n' "$log" >&2
        tail -n 30 "$log" >&2
    fi
    exit 1
}

# stdout+stderr of daemon NAME. slurmd also writes SlurmdLogFile (log/slurmd-<node>.log,
# where slurmstepd logs too), so its stderr goes to a file of its own.
log_of() {
    case $1 in
    slurmd-*) printf '%s/log/%s.stderr' "$RUN_DIR" "$1" ;;
    *) printf '%s/log/%s.log' "$RUN_DIR" "$1" ;;
    esac
}
pid_of() { printf '%s/pids/%s.pid' "$RUN_DIR" "$1"; }

# alive NAME: the recorded PID runs the program NAME names (slurmd-node1 -> slurmd).
alive() {
    local f=$RUN_DIR/pids/$1.pid pid comm
    [[ -r $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "${1%%-*}" ]]
}

# wait_for NAME DESCRIPTION CMD...: poll CMD until it succeeds; fail with NAME's
# log tail when NAME's process dies or the deadline passes.
wait_for() {
    local name=$1 what=$2 deadline=$((SECONDS + WAIT_S))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [[ $name != - ]] && ! alive "$name"; then
            die "$(log_of "$name")" "$name exited while waiting for $what"
        fi
        if ((SECONDS >= deadline)); then
            [[ $name == - ]] && die "" "timed out after ${WAIT_S}s waiting for $what"
            die "$(log_of "$name")" "timed out after ${WAIT_S}s waiting for $what"
        fi
        sleep 0.3
    done
}

# start NAME CMD...: run CMD in the foreground of a new session, output to the
# daemon's log, and record its PID. The subshell execs setsid, which does not fork
# (a background job of a non-interactive shell is no process-group leader) and
# execs the daemon, so $! is the daemon itself.
start() {
    local name=$1
    shift
    if alive "$name"; then
        say "$name already running (pid $(<"$(pid_of "$name")"))"
        return 0
    fi
    say "starting $name"
    printf '\n=== %s cluster-up: %s\n' "$(date -Is)" "$*" >>"$(log_of "$name")"
    # cd /: the daemons (and so every hook they run) must not inherit the caller's cwd.
    (cd / && exec setsid "$@" </dev/null >>"$(log_of "$name")" 2>&1) &
    local pid=$! deadline=$((SECONDS + 5))
    echo "$pid" >"$(pid_of "$name")"
    until alive "$name"; do
        [[ -d /proc/$pid ]] || die "$(log_of "$name")" "$name exited at start"
        ((SECONDS < deadline)) || die "$(log_of "$name")" "pid $pid never became $name"
        sleep 0.05
    done
}

# install_file SRC DEST MODE OWNER: install when the content differs; return 0 if changed.
install_file() {
    if [[ -f $2 ]] && cmp -s "$1" "$2"; then
        chmod "$3" "$2" && chown "$4" "$2"
        return 1
    fi
    install -m "$3" -o "${4%%:*}" -g "${4##*:}" "$1" "$2"
    say "wrote $2"
}

# render TEMPLATE: substitute @RUN_DIR@ and @DB_PASS@.
render() {
    sed -e "s|@RUN_DIR@|$RUN_DIR|g" -e "s|@DB_PASS@|$DB_PASS|g" "$1"
}

nodes_up() {
    local n state
    for n in "${NODES[@]}"; do
        state=$(sinfo -h -N -n "$n" -o '%T' 2>/dev/null | head -n 1) || return 1
        [[ $state =~ ^(idle|mixed|allocated|completing)$ ]] || return 1
    done
}

# A node an earlier run left drained (a failing hook drains it) is responding but
# not "up": show why and resume it, once per node.
declare -A resumed=()
resume_stuck_nodes() {
    local n state reason
    for n in "${NODES[@]}"; do
        [[ -n ${resumed[$n]:-} ]] && continue
        IFS='|' read -r state reason < <(sinfo -h -N -n "$n" -o '%T|%E' 2>/dev/null | head -n 1) || continue
        [[ $state =~ ^(drained|draining|down)$ ]] || continue
        say "node $n is $state (reason: $reason); resuming it"
        scontrol update nodename="$n" state=resume || true
        resumed[$n]=1
    done
}

munge_ok() { munge -n -S "$MUNGE_SOCK" | unmunge -S "$MUNGE_SOCK"; }
mysql_ok() { mariadb-admin --socket="$MYSQL_SOCK" ping; }
sacctmgr_ok() { sacctmgr -n -P list cluster format=cluster; }
sql() { mariadb --socket="$MYSQL_SOCK" -u root -e "$1"; }

# exists KIND NAME: sacctmgr already knows the account/user/cluster.
exists() { [[ -n $(sacctmgr -n -P show "$1" "$2" format="$1" 2>/dev/null) ]]; }

ensure_account() {
    exists account "$1" && return 0
    sacctmgr -i add account "$1" cluster="$CLUSTER" description="$1" organization=nomade >/dev/null
    say "added account $1"
}

# ensure_user NAME UID DEFAULT_ACCOUNT [ACCOUNT...]: Unix user with a home dir and
# an association with each account.
ensure_user() {
    local name=$1 uid=$2 def=$3 a
    shift 2
    getent group "$name" >/dev/null || groupadd -g "$uid" "$name"
    if ! id -u "$name" >/dev/null 2>&1; then
        useradd -m -u "$uid" -g "$uid" -s /bin/bash "$name"
        say "created Unix user $name (uid $uid)"
    fi
    [[ $(id -u "$name") == "$uid" ]] || die "" "user $name exists with uid $(id -u "$name"), want $uid"
    for a in "$@"; do
        [[ -n $(sacctmgr -n -P show assoc where user="$name" account="$a" format=user 2>/dev/null) ]] && continue
        sacctmgr -i add user "$name" account="$a" defaultaccount="$def" cluster="$CLUSTER" >/dev/null
        say "added user $name to account $a"
    done
}

# The cluster's accounts and users: alice and bob for the tests; carol and grace are two users of
# the recorded workload (data/workload-v1, which the demo imports), so that a job they submit
# here is scored on their own recorded history (slurm-conf/demo-warning.sh).
USERS=(alice bob carol grace)
ensure_users() {
    ensure_account research
    ensure_account physics
    ensure_user alice 2001 research research physics
    ensure_user bob 2002 physics physics
    ensure_user carol 2003 research research
    ensure_user grace 2004 research research
}

[[ $(id -u) -eq 0 ]] || die "" "run as root"
[[ $RUN_DIR == /* ]] || die "" "NOMADE_CLUSTER_DIR must be an absolute path: $RUN_DIR"
for bin in munged mariadbd slurmdbd slurmctld slurmd sinfo sacctmgr setpriv; do
    command -v "$bin" >/dev/null || die "" "$bin not found; run slurm-conf/install-deps.sh first"
done

# --- directories ---------------------------------------------------------------
install -d -m 755 "$RUN_DIR" "$RUN_DIR/pids" "$RUN_DIR/log" "$ETC"
install -d -m 755 -o slurm -g slurm "$RUN_DIR/run"
install -d -m 700 -o slurm -g slurm "$RUN_DIR/state"
for n in "${NODES[@]}"; do install -d -m 755 "$RUN_DIR/spool/$n"; done
install -d -m 755 -o munge -g munge /run/munge
install -d -m 755 -o mysql -g mysql /run/mysqld

if [[ ! -s $RUN_DIR/db.pass ]]; then
    (umask 077 && head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$RUN_DIR/db.pass")
fi
DB_PASS=$(<"$RUN_DIR/db.pass")

# --- configuration -------------------------------------------------------------
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
conf_changed=0
render "$HERE/slurm.conf.in" >"$tmp/slurm.conf"
install_file "$tmp/slurm.conf" "$ETC/slurm.conf" 644 root:root && conf_changed=1
install_file "$HERE/cgroup.conf" "$ETC/cgroup.conf" 644 root:root && conf_changed=1
render "$HERE/slurmdbd.conf.in" >"$tmp/slurmdbd.conf"
install_file "$tmp/slurmdbd.conf" "$ETC/slurmdbd.conf" 600 slurm:slurm || true
# Slurm 22.05 prints 's_p_parse_file: file "..." is empty' on stderr of every
# command when an included file has zero bytes, so "empty" here means one comment.
if [[ ! -s $HOOKS_CONF ]]; then
    printf '# NØMADE hooks: none installed (nomadectl install-hooks writes this file)\n' >"$HOOKS_CONF"
    chmod 644 "$HOOKS_CONF"
    say "created $HOOKS_CONF without hooks"
fi

# A slurmctld started without PrologSlurmctld never runs one added later: restart it.
controller_hooks_configured() { grep -q '^[[:space:]]*PrologSlurmctld=' "$HOOKS_CONF" 2>/dev/null; }
if ((HOOKS_CHANGED)) && alive slurmctld && controller_hooks_configured &&
    [[ $(cat "$RUN_DIR/slurmctld.prep" 2>/dev/null) != 1 ]]; then
    say "restarting slurmctld: it was started without PrologSlurmctld, which Slurm then never runs"
    pid=$(<"$(pid_of slurmctld)")
    kill "$pid"
    deadline=$((SECONDS + WAIT_S))
    while alive slurmctld; do
        ((SECONDS < deadline)) || die "$(log_of slurmctld)" "slurmctld (pid $pid) did not exit within ${WAIT_S}s"
        sleep 0.1
    done
fi

# Fast path: everything recorded is running and both nodes answer.
all_alive=1
for d in "${DAEMONS[@]}"; do alive "$d" || all_alive=0; done
if ((all_alive)) && nodes_up; then
    if ((conf_changed)); then
        scontrol reconfigure
        say "slurm.conf or cgroup.conf changed: ran scontrol reconfigure"
    fi
    # A cluster brought up by an older cluster-up.sh gets the users added since; looked for as
    # Unix users, since sacctmgr is slow and this fast path runs before every cluster test.
    for u in "${USERS[@]}"; do
        id -u "$u" >/dev/null 2>&1 || {
            ensure_users
            break
        }
    done
    say "cluster already up (run dir $RUN_DIR)"
    exit 0
fi

# --- munge ---------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    say "created /etc/munge/munge.key"
fi
chown munge:munge /etc/munge/munge.key
chmod 600 /etc/munge/munge.key
start munged setpriv --reuid=munge --regid=munge --init-groups munged --foreground
wait_for munged "munge credentials" munge_ok

# --- MariaDB -------------------------------------------------------------------
if [[ ! -d $MYSQL_DATADIR/mysql ]]; then
    say "initialising MariaDB datadir $MYSQL_DATADIR"
    mariadb-install-db --user=mysql --datadir="$MYSQL_DATADIR" >>"$(log_of mariadbd)" 2>&1 ||
        die "$(log_of mariadbd)" "mariadb-install-db failed"
fi
start mariadbd mariadbd --user=mysql --datadir="$MYSQL_DATADIR" --socket="$MYSQL_SOCK" \
    --pid-file=/run/mysqld/mysqld.pid --skip-networking --innodb-lock-wait-timeout=900
wait_for mariadbd "MariaDB on $MYSQL_SOCK" mysql_ok
sql "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
     CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
     ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
     GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" ||
    die "$(log_of mariadbd)" "could not create database slurm_acct_db and user slurm"

# --- slurmdbd and accounting ---------------------------------------------------
start slurmdbd slurmdbd -D
wait_for slurmdbd "slurmdbd to answer sacctmgr" sacctmgr_ok
if ! exists cluster "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
    say "added cluster $CLUSTER to accounting"
fi
ensure_users

# --- slurmctld and the two slurmd ----------------------------------------------
ctld_was_up=0
alive slurmctld && ctld_was_up=1
if ! alive slurmctld; then
    if controller_hooks_configured; then echo 1; else echo 0; fi >"$RUN_DIR/slurmctld.prep"
fi
start slurmctld slurmctld -D
wait_for slurmctld "slurmctld to answer" scontrol ping
if ((conf_changed && ctld_was_up)); then
    scontrol reconfigure
    say "slurm.conf or cgroup.conf changed: ran scontrol reconfigure"
fi
for n in "${NODES[@]}"; do
    start "slurmd-$n" slurmd -D -N "$n"
done
deadline=$((SECONDS + WAIT_S))
until nodes_up; do
    for n in "${NODES[@]}"; do
        alive "slurmd-$n" || die "$(log_of "slurmd-$n")" "slurmd -N $n exited"
    done
    resume_stuck_nodes
    if ((SECONDS >= deadline)); then
        sinfo -N >&2 || true
        die "$(log_of slurmctld)" "timed out after ${WAIT_S}s waiting for node1 and node2 to be idle"
    fi
    sleep 0.3
done
sinfo -N -h -o '%N %T %E' | sort -u | sed 's/^/cluster-up: node /'
wait_for - "sacctmgr" sacctmgr_ok
say "cluster $CLUSTER up in $((SECONDS - T0))s (run dir $RUN_DIR; logs in $RUN_DIR/log)"
