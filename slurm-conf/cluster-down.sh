#!/usr/bin/env bash
# Stop the NØMADE development cluster that cluster-up.sh started: cancel the jobs
# (so slurmstepd removes their cgroups), then stop each recorded daemon in reverse
# start order, checking that the PID still runs the expected program. Run as root.
#
#   NOMADE_CLUSTER_DIR   run dir cluster-up.sh used [/var/lib/nomade-cluster]
#   NOMADE_CLUSTER_WAIT  seconds to wait for jobs and for each daemon to exit [30]
set -euo pipefail

RUN_DIR=${NOMADE_CLUSTER_DIR:-/var/lib/nomade-cluster}
WAIT_S=${NOMADE_CLUSTER_WAIT:-30}
# Reverse of the start order in cluster-up.sh.
DAEMONS=(slurmd-node2 slurmd-node1 slurmctld slurmdbd mariadbd munged)

say() { printf 'cluster-down: %s\n' "$*"; }

# recorded_pid NAME: print the recorded PID if it still runs the program NAME
# names (slurmd-node1 -> slurmd); fail otherwise.
recorded_pid() {
    local f=$RUN_DIR/pids/$1.pid pid comm
    [[ -r $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "${1%%-*}" ]] || return 1
    printf '%s\n' "$pid"
}

[[ $(id -u) -eq 0 ]] || {
    echo "cluster-down: ERROR: run as root" >&2
    exit 1
}
[[ -d $RUN_DIR/pids ]] || {
    say "nothing recorded in $RUN_DIR/pids; nothing to stop"
    exit 0
}

if recorded_pid slurmctld >/dev/null; then
    if [[ -n $(squeue -h -o '%i' 2>/dev/null) ]]; then
        say "cancelling all jobs"
        squeue -h -o '%i' | xargs -r scancel 2>/dev/null || true
        deadline=$((SECONDS + WAIT_S))
        while [[ -n $(squeue -h -o '%i' 2>/dev/null) ]] && ((SECONDS < deadline)); do
            sleep 0.3
        done
        [[ -z $(squeue -h -o '%i' 2>/dev/null) ]] || say "WARNING: jobs still listed after ${WAIT_S}s: $(squeue -h -o '%i %T' | paste -sd' ')"
    fi
fi

rc=0
for name in "${DAEMONS[@]}"; do
    f=$RUN_DIR/pids/$name.pid
    [[ -e $f ]] || continue
    if ! pid=$(recorded_pid "$name"); then
        say "$name not running (stale $f)"
        rm -f "$f"
        continue
    fi
    say "stopping $name (pid $pid)"
    kill -TERM "$pid"
    deadline=$((SECONDS + WAIT_S))
    while recorded_pid "$name" >/dev/null && ((SECONDS < deadline)); do
        sleep 0.1
    done
    if recorded_pid "$name" >/dev/null; then
        say "WARNING: $name (pid $pid) ignored SIGTERM for ${WAIT_S}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
        if recorded_pid "$name" >/dev/null; then
            say "ERROR: $name (pid $pid) still running"
            rc=1
            continue
        fi
    fi
    rm -f "$f"
done
((rc == 0)) && say "cluster stopped"
exit "$rc"
