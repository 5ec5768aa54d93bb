#!/bin/bash
# NØMADE's node hooks in bash, starting no process on the common path: prolog and epilog (root,
# every node) hand the job's start and end to the local agent through its spool inbox;
# taskprolog (the job's user) prints the job's warning, left by the agent, into the job's output
# with Slurm's "print" mechanism.  Sourced, in a subshell, by the wrappers beside it, which kill
# it past their hard limit; every path exits 0.
export LC_ALL=C
kind=$1
here=${0%/*}
NOMADE_SPOOL_DIR=/var/spool/nomade
NOMADE_STATE_DIR=/var/spool/nomade/hooks
NOMADE_TASK_NOTICE=0
NOMADE_VERDICT_WAIT_STEPS=10
# shellcheck source=/dev/null
[[ -r $here/hooks.env ]] && . "$here/hooks.env"

job=${SLURM_JOB_ID:-}
[[ $job =~ ^[0-9]+$ ]] || exit 0
node=${SLURMD_NODENAME:-$HOSTNAME}
node=${node%%.*}
dir=$NOMADE_SPOOL_DIR/$node

fail() {
    { [[ -d $NOMADE_STATE_DIR ]] || mkdir -p "$NOMADE_STATE_DIR"; } 2>/dev/null
    printf '%(%Y-%m-%dT%H:%M:%S)T %s job=%s %s\n' -1 "$kind" "$job" "$1" >>"$NOMADE_STATE_DIR/hooks-$kind.log" 2>/dev/null
    exit 0
}

report() { # $1: start | end
    [[ -d $dir/inbox ]] || mkdir -p "$dir/inbox" 2>/dev/null || fail "cannot create $dir/inbox"
    local user=${SLURM_JOB_USER:-} uid=${SLURM_JOB_UID:-} now=$EPOCHREALTIME
    user=${user//[\"\\]/}
    [[ $uid =~ ^[0-9]+$ ]] || uid=
    # One line in one write, under its final name: the agent takes a report only once its
    # closing newline is there (no rename, which would cost a process).
    local name="${now/./}-$job-$1.json"
    printf '{"event": "%s", "job_id": %s, "node": "%s", "t": %s, "uid": "%s", "user": "%s"}\n' \
        "$1" "$job" "$node" "$now" "$uid" "$user" >"$dir/inbox/$name" 2>/dev/null ||
        fail "cannot write $dir/inbox/$name"
}

task_prolog() {
    [[ ${SLURM_PROCID:-0} == 0 ]] || exit 0
    # Once per job: in the batch step (its task has no step id in Slurm 22.05), or in step 0 of
    # a job without a batch script (a batch job's steps inherit ENVIRONMENT=BATCH).
    local step=${SLURM_STEP_ID:-${SLURM_STEPID:-batch}}
    case $step in
    batch | 4294967294) ;;
    0) [[ ${ENVIRONMENT:-} == BATCH ]] && exit 0 ;;
    *) exit 0 ;;
    esac
    # The agent receives every scored job's verdict moments after PrologSlurmctld; wait briefly,
    # unless the agent knows the aggregator is not answering (no verdict can come).
    # Each 20 ms wait is a read with a timeout on this user's FIFO <node>/wait/<uid> (mode 0600,
    # the user's own, so no one else can write to it and end the wait early), opened read-write
    # so the open never blocks: no process is started for the wait.  The agent makes the FIFO
    # when it takes the Prolog's report; until then (a user's first job on the node) each step
    # sleeps and looks for it again.  $UID is the real uid: the job's user cannot set it.
    local i=0 wait_fd='' fifo=$dir/wait/$UID
    [[ -e $dir/offline ]] && i=$NOMADE_VERDICT_WAIT_STEPS
    while [[ ! -e $dir/verdicts/$job.json ]] && ((i < NOMADE_VERDICT_WAIT_STEPS)); do
        [[ -z $wait_fd && -p $fifo ]] && { exec {wait_fd}<>"$fifo"; } 2>/dev/null
        if [[ -n $wait_fd ]]; then read -r -t 0.02 -u "$wait_fd" _; else sleep 0.02; fi
        i=$((i + 1))
    done
    if [[ -r $dir/jobs/$job ]]; then
        local line
        while IFS= read -r line || [[ -n $line ]]; do
            printf 'print %s\n' "$line"
        done <"$dir/jobs/$job"
    elif [[ $NOMADE_TASK_NOTICE == 1 ]]; then
        echo "print NØMADE: job $job is monitored by NØMADE (nomadectl job $job)"
    fi
}

case $kind in
prolog) report start ;;
epilog) report end ;; # the agent removes the job's verdict when it takes this report
taskprolog) task_prolog ;;
esac
exit 0
