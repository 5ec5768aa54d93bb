#!/bin/bash
# NØMADE's head-node hooks (PrologSlurmctld, EpilogSlurmctld) in bash, without starting an
# interpreter or, on the common path, any other process: slurmctld starts one per job, a job
# array starts them by the dozen, and each millisecond here delays a job's start.  The report is
# one file left in the aggregator's reports directory when the aggregator runs on this host
# (controller_spool in hooks.json: no waiting on the aggregator at all, and starts are kept while
# it is down), else one HTTP POST behind a circuit breaker, signed with a MUNGE credential (one
# `munge` process, the only one started, and only on this path) and sent over bash's /dev/tcp,
# or with curl for an https:// aggregator_url.  A report the aggregator does not take is kept in
# <state_dir>/unsent/ and sent, oldest first, by a later hook once the aggregator answers again
# (or by hand: `controller_hook.sh resend`).  Every path of a hook exits 0.  Run by the wrappers
# beside it, in a subshell that they kill past their hard limit.
export LC_ALL=C
kind=$1
here=${0%/*}
[[ $0 == */* ]] || here=.
start=$EPOCHREALTIME
conf=
[[ -r $here/hooks.json ]] && conf=$(<"$here/hooks.json")

setting() { # $1 key, $2 default: a flat value from hooks.json (written by nomadectl install-hooks)
    if [[ $conf =~ \"$1\":\ *\"?([^\",\}]*) ]]; then REPLY=${BASH_REMATCH[1]}; else REPLY=$2; fi
}
setting state_dir /var/spool/nomade/hooks; state_dir=$REPLY
unsent=$state_dir/unsent
unsent_max=10000   # reports kept at most; past it the oldest is dropped (dropped_total)
resend_per_run=4   # kept reports a hook sends at most after its own, within its budget
job=${SLURM_JOB_ID:-}
case $kind in
prologslurmctld) path=/api/v1/hooks/job-start ;;
epilogslurmctld) path=/api/v1/hooks/job-end ;;
resend) ;; # by hand: send the kept reports now (see the end of this file)
*) exit 0 ;;
esac

json_string() { # JSON-escape $1 into REPLY
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/\\t}
    s=${s//$'\r'/\\r}
    REPLY=${s//[$'\001'-$'\037']/}
}

if [[ $kind != resend ]]; then
    body='{"env": {'
    sep=
    special=$'*["\\\\\001-\037]*' # a value without '"', '\' or a control character needs no escaping
    for name in ${!SLURM@}; do
        REPLY=${!name}
        # shellcheck disable=SC2053 # $special is a pattern
        [[ $REPLY == $special ]] && json_string "$REPLY"
        body+="$sep\"$name\": \"$REPLY\""
        sep=', '
    done
    body+="}, \"kind\": \"$kind\", \"t\": $EPOCHREALTIME}"

    # Spool transport: one line in one write, under its final name; the aggregator takes a report
    # once its closing newline is there.  Should the write fail, the report goes over HTTP.
    setting controller_spool ''
    if [[ -n $REPLY ]]; then
        name=$REPLY/${EPOCHREALTIME/./}-${job//[!0-9]/}-$kind.json
        printf '%s\n' "$body" >"$name" 2>/dev/null && exit 0
        mkdir -p "$state_dir" 2>/dev/null
        printf '%(%Y-%m-%dT%H:%M:%S)T %s job=%s cannot write %s; sent over HTTP\n' -1 "$kind" "$job" "$name" \
            >>"$state_dir/hooks-$kind.log" 2>/dev/null
    fi
fi

# HTTP transport, behind the circuit breaker.
setting timeout_seconds 1.0; limit=$REPLY
setting aggregator_url http://127.0.0.1:27011; scheme=${REPLY%%://*}; url=${REPLY#*://}; url=${url%%/*}
setting breaker_failures 3; breaker_failures=${REPLY%%.*}
setting breaker_seconds 60; breaker_seconds=${REPLY%%.*}
host=${url%:*}; port=${url##*:}; [[ $port == "$host" ]] && port=80
now=${EPOCHREALTIME%.*}
breaker=$state_dir/breaker.json
state=
[[ -r $breaker ]] && state=$(<"$breaker")
count() { if [[ $state =~ \"$1\":\ *([0-9.]+) ]]; then REPLY=${BASH_REMATCH[1]%%.*}; else REPLY=0; fi; }
count failures_in_row; in_row=$REPLY
count failures_total; total=$REPLY
count skipped_total; skipped=$REPLY
count dropped_total; dropped=$REPLY
# Whether the breaker is open is its own file, written only by the hook that opens it, so that
# a hook finishing later with an older view of breaker.json cannot close it again.
open_until=0
[[ -r $state_dir/open_until ]] && open_until=$(<"$state_dir/open_until")
[[ $open_until =~ ^[0-9]+$ ]] || open_until=0
last_error=
[[ $state =~ \"last_error\":\ *\"([^\"]*)\" ]] && last_error=${BASH_REMATCH[1]}

# Keep 30% of the limit (at least 0.1 s) to record a failure before the wrapper's kill: the
# aggregator must have answered by $deadline (µs).
whole=${limit%%.*}
frac=0
[[ $limit == *.* ]] && frac=${limit#*.}
frac=${frac}000
limit_ms=$((10#${whole:-0} * 1000 + 10#${frac:0:3}))
reserve=$((limit_ms * 3 / 10 < 100 ? 100 : limit_ms * 3 / 10))
deadline=$((${start/./} + (limit_ms - reserve) * 1000))

setting munge_socket ''
socket_opt=()
[[ -n $REPLY ]] && socket_opt=(--socket="$REPLY")
setting tls_ca ''
ca=()
[[ -n $REPLY ]] && ca=(--cacert "$REPLY")

save_breaker() {
    [[ -d $state_dir ]] || mkdir -p "$state_dir" 2>/dev/null
    printf '{"failures_in_row": %s, "failures_total": %s, "skipped_total": %s, "dropped_total": %s, "open_until": %s, "last_error": "%s"}\n' \
        "$in_row" "$total" "$skipped" "$dropped" "$open_until" "$last_error" >"$breaker.tmp.$$" 2>/dev/null &&
        mv -f "$breaker.tmp.$$" "$breaker" 2>/dev/null
}

send() { # POST body $2 to path $1, answered by $deadline (µs): 0 once the aggregator has taken
    # it; else 1, with $why (the failure) and $code (the HTTP status; empty without an answer).
    # The credential binds method, path and body (nomade_common/munge.py's inline payload: the
    # body itself, as hashing it would cost a process): good for this request only, and munged
    # accepts it once.  The payload goes to munge on stdin: a command line is readable by every
    # user on this host, and the report holds the job's name and directory.
    local cred left wait_s status line answer
    code=
    cred=$(munge "${socket_opt[@]}" 2>/dev/null <<<"nomade-http-1 POST $1 body"$'\n'"$2") || {
        why="MungeError: munge could not make a credential (is munged running?)"
        return 1
    }
    left=$(((deadline - ${EPOCHREALTIME/./}) / 1000)) # ms
    ((left > 50)) || { why="TimeoutError: no time left to reach the aggregator"; return 1; }
    printf -v wait_s '%d.%03d' $((left / 1000)) $((left % 1000))
    if [[ $scheme == https ]]; then
        # curl reads the credential from a pipe (-H @file), not its command line: no other user
        # sees it in the process list.
        answer=$(printf '%s' "$2" | curl -sS --max-time "$wait_s" "${ca[@]}" -X POST \
            -H @<(printf 'Authorization: MUNGE %s\n' "$cred") -H 'Content-Type: application/json' \
            --data-binary @- -w '\n%{http_code}' "https://$url$1" 2>&1) ||
            { why="CurlError: ${answer//[$'\n\r']/ }"; return 1; }
        code=${answer##*$'\n'}
        answer=${answer%$'\n'*}
        [[ $code == 200 ]] || { why="HTTPError: HTTP Error $code"; return 1; }
    else
        exec 3<>"/dev/tcp/$host/$port" 2>/dev/null ||
            { why="ConnectionRefusedError: cannot connect to $host:$port"; return 1; }
        printf 'POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: MUNGE %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
            "$1" "$host" "$cred" "${#2}" "$2" >&3 2>/dev/null ||
            { exec 3<&-; why="BrokenPipeError: sending to $host:$port"; return 1; }
        IFS= read -r -t "$wait_s" status <&3 ||
            { exec 3<&-; why="TimeoutError: no answer from $host:$port within ${wait_s} s"; return 1; }
        code=${status:9:3}
        [[ $status == "HTTP/1."?" 200"* ]] || { exec 3<&-; why="HTTPError: ${status%$'\r'}"; return 1; }
        answer=
        while IFS= read -r -t "$wait_s" line <&3; do answer+=$line; done
        answer+=$line
        exec 3<&-
    fi
    [[ $answer =~ \"ok\":\ *true ]] || { why="ValueError: unexpected answer from the aggregator"; return 1; }
}

# The report, unless the breaker is open (or this is `resend`, by hand).
taken=
if [[ $kind != resend ]] && ((open_until <= now)); then
    t0=${EPOCHREALTIME/./}
    if send "$path" "$body"; then
        if ((in_row > 0 || open_until > 0)) || [[ -e $state_dir/failures || -e $state_dir/open_until ]]; then
            in_row=0
            open_until=0
            rm -f "$state_dir/failures" "$state_dir/open_until" 2>/dev/null
            save_breaker
        fi
        taken=$((${EPOCHREALTIME/./} - t0)) # µs: what sending one report costs now
        files=()
        if [[ -d $unsent ]]; then # reports kept earlier, oldest first (one stat when none)
            shopt -s nullglob
            files=("$unsent"/[0-9]*.json)
            shopt -u nullglob
        fi
        ((${#files[@]})) || exit 0 # the common path ends here
    fi
fi

# Off the common path.  Bash reads a script as it runs it: a hook that has exited above never
# reads (parses) what follows.
log() { # $1: one line in this hook's failure log
    printf '%(%Y-%m-%dT%H:%M:%S)T %s job=%s %s\n' -1 "$kind" "$job" "$1" >>"$state_dir/hooks-$kind.log" 2>/dev/null
}

refused() { # whether HTTP status $1 says that the report itself is bad: sending it again cannot help
    [[ $1 == 400 || $1 == 413 ]]
}

make_room() { # for one more report in unsent/: past unsent_max, the oldest go (dropped_total)
    local files
    if [[ -d $unsent ]]; then
        shopt -s nullglob
        files=("$unsent"/[0-9]*.json) # oldest first: the names begin with the µs they were kept
        shopt -u nullglob
        ((${#files[@]} >= unsent_max)) || return 0
        files=("${files[@]:0:${#files[@]}-unsent_max+1}")
        rm -f "${files[@]}" 2>/dev/null
        dropped=$((dropped + ${#files[@]}))
        log "unsent/ holds $unsent_max reports: dropped the oldest, ${files[0]##*/}"
    else
        # shellcheck disable=SC2174 # only unsent/ is 0700: the state dir is install-hooks'
        mkdir -p -m 0700 "$unsent" 2>/dev/null
    fi
}

keep_and_exit() { # keep the report in unsent/ (one line, one write, 0600) for a later hook
    local name=$unsent/${EPOCHREALTIME/./}-${job//[!0-9]/}-$kind.json
    umask 077 # the last thing this hook writes: no process to set and restore it
    printf '%s\n' "$body" >"$name" 2>/dev/null && exit 0
    rm -f "$name" 2>/dev/null # a full disk may have left part of it
    log "cannot keep the report in $unsent: it is lost"
    exit 0
}

failed() { # $1: what went wrong
    last_error=${1//\"/\'}
    if refused "$code"; then
        # The aggregator answered: it is up, so this does not count toward the breaker (a user
        # whose job names kept being refused would otherwise keep it open for everyone).
        total=$((total + 1))
        save_breaker
        log "$last_error; the aggregator refused the report itself: not kept"
        exit 0
    fi
    # Failures in a row are counted in an append-only file (one line each, atomic with O_APPEND),
    # so that hooks failing at the same moment in a job-array burst all count: a read-modify-write
    # of breaker.json would let each of them see the same old count.
    [[ -d $state_dir ]] || mkdir -p "$state_dir" 2>/dev/null
    printf '%s\n' "$now" >>"$state_dir/failures" 2>/dev/null
    local lines=
    [[ -r $state_dir/failures ]] && lines=$(<"$state_dir/failures") # trailing newline dropped
    in_row=0
    if [[ -n $lines ]]; then
        lines=${lines//[!$'\n']/}
        in_row=$((${#lines} + 1))
    fi
    total=$((total + 1))
    if ((in_row >= breaker_failures)); then
        open_until=$((now + breaker_seconds))
        in_row=0
        printf '%s\n' "$open_until" >"$state_dir/open_until.$$" 2>/dev/null &&
            mv -f "$state_dir/open_until.$$" "$state_dir/open_until" 2>/dev/null
        rm -f "$state_dir/failures" 2>/dev/null
    fi
    make_room
    save_breaker
    log "$last_error; report kept in unsent/"
    keep_and_exit
}
lock=$unsent/.lock
take_lock() { # one sender of kept reports at a time (a burst of hooks would send each one 16 times)
    local held
    set -C # O_EXCL: of hooks trying at the same moment, one creates the lock
    { printf '%s\n' "$now" >"$lock"; } 2>/dev/null && { set +C; return 0; }
    set +C
    # A holder that took it longer ago than it may live (the wrapper kills a hook at its limit;
    # `resend` renews it before each report) is gone: take its lock.
    held=
    [[ -r $lock ]] && IFS= read -r held <"$lock"
    [[ $held =~ ^[0-9]+$ ]] && ((now - held > 2 + 2 * limit_ms / 1000)) || return 1
    rm -f "$lock" 2>/dev/null
    set -C
    { printf '%s\n' "$now" >"$lock"; } 2>/dev/null && { set +C; return 0; }
    set +C
    return 1
}

set_aside() { # $1: a kept report that cannot be sent, to unsent/bad/; $2: why
    [[ -d $unsent/bad ]] || mkdir -m 0700 "$unsent/bad" 2>/dev/null
    mv -f "$1" "$unsent/bad/" 2>/dev/null
    say "set aside ${1##*/} in unsent/bad/: $2"
}

# Sending kept reports (the array files), oldest first: one request each, with its own
# credential (its own `munge`), stopping at the first that the aggregator does not take (it
# stays, with those after it); those it refuses as bad (400, 413) go to unsent/bad/.  Sets sent,
# aside and waiting (the reports still kept).
drain() { # $1: most reports to send; $2: hook (within its budget) or hand (no budget)
    local f line kept_at rpath t0 gone=()
    sent=0 aside=0 waiting=("${files[@]}")
    for f in "${files[@]:0:$1}"; do
        if [[ $2 == hook ]]; then # each needs about what the hook's own report took, twice over
            ((deadline - ${EPOCHREALTIME/./} > 2 * cost)) || break
        else # each gets the hook's limit, and the lock is renewed
            now=${EPOCHREALTIME%.*}
            deadline=$((${EPOCHREALTIME/./} + limit_ms * 1000))
            printf '%s\n' "$now" >"$lock" 2>/dev/null
        fi
        [[ -e $f ]] || { waiting=("${waiting[@]:1}"); continue; } # another sender had it
        [[ -r $f ]] || { say "cannot read $f: run as root or SlurmUser"; break; }
        if ! IFS= read -r line <"$f"; then # no closing newline: being written, or cut short
            kept_at=${f##*/}
            kept_at=${kept_at%%-*}
            [[ $kept_at =~ ^[0-9]{1,18}$ ]] && ((${EPOCHREALTIME/./} - 10#$kept_at < 10000000)) && break
            set_aside "$f" "incomplete (no closing newline)"
            aside=$((aside + 1)) waiting=("${waiting[@]:1}")
            continue
        fi
        case $f in
        *-prologslurmctld.json) rpath=/api/v1/hooks/job-start ;;
        *-epilogslurmctld.json) rpath=/api/v1/hooks/job-end ;;
        *)
            set_aside "$f" "not named for a hook's report"
            aside=$((aside + 1)) waiting=("${waiting[@]:1}")
            continue
            ;;
        esac
        t0=${EPOCHREALTIME/./}
        if send "$rpath" "$line"; then
            t0=$((${EPOCHREALTIME/./} - t0))
            ((t0 > cost)) && cost=$t0
            sent=$((sent + 1)) waiting=("${waiting[@]:1}")
            if [[ $2 == hook ]]; then gone+=("$f"); else rm -f "$f" 2>/dev/null; fi
        elif refused "$code"; then
            set_aside "$f" "$why"
            aside=$((aside + 1)) waiting=("${waiting[@]:1}")
        else
            say "sending ${f##*/} again failed: $why; ${#waiting[@]} reports kept in unsent/"
            break
        fi
    done
    rm -f "${gone[@]}" "$lock" 2>/dev/null # one process for all
}
if [[ $kind == resend ]]; then
    # By hand, as root or SlurmUser: `controller_hook.sh resend` sends every kept report now,
    # whatever the breaker says.  Exits 0 once unsent/ is empty, else 1.
    say() { printf '%s\n' "$1"; }
    [[ -d $unsent ]] || { say "nothing to send: $unsent does not exist"; exit 0; }
    take_lock || { say "a hook is sending kept reports now ($lock): try again in a few seconds"; exit 1; }
    trap 'rm -f "$lock" 2>/dev/null' EXIT
    shopt -s nullglob
    files=("$unsent"/[0-9]*.json)
    shopt -u nullglob
    drain ${#files[@]} hand
    say "sent $sent, set aside $aside (in unsent/bad/), ${#waiting[@]} still kept in $unsent"
    ((${#waiting[@]} == 0)) && exit 0
    exit 1
fi
if [[ -n $taken ]]; then
    # The aggregator has taken this hook's report: a few kept reports follow it, oldest first,
    # while the budget lasts (each needs about what this one took, twice over to be safe).
    say() { log "$1"; }
    cost=$taken
    take_lock && drain "$resend_per_run" hook
    exit 0
fi
if ((open_until > now)); then # kept without asking the aggregator
    skipped=$((skipped + 1))
    make_room
    save_breaker
    keep_and_exit
fi
failed "$why"
