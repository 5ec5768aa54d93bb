#!/bin/bash
# NØMADE's head-node hooks (PrologSlurmctld, EpilogSlurmctld) in bash, without starting an
# interpreter or, on the common path, any other process: slurmctld starts one per job, a job
# array starts them by the dozen, and each millisecond here delays a job's start.  The report is
# one file left in the aggregator's reports directory when the aggregator runs on this host
# (controller_spool in hooks.json: no waiting on the aggregator at all, and starts are kept while
# it is down), else one HTTP POST behind a circuit breaker, signed with a MUNGE credential (one
# `munge` process, the only one started, and only on this path) and sent over bash's /dev/tcp,
# or with curl for an https:// aggregator_url.  Every path exits 0.  Run by the wrappers beside
# it, in a subshell that they kill past their hard limit.
export LC_ALL=C
kind=$1
here=${0%/*}
start=$EPOCHREALTIME
conf=
[[ -r $here/hooks.json ]] && conf=$(<"$here/hooks.json")

setting() { # $1 key, $2 default: a flat value from hooks.json (written by nomadectl install-hooks)
    if [[ $conf =~ \"$1\":\ *\"?([^\",\}]*) ]]; then REPLY=${BASH_REMATCH[1]}; else REPLY=$2; fi
}
setting state_dir /var/spool/nomade/hooks; state_dir=$REPLY
job=${SLURM_JOB_ID:-}
case $kind in
prologslurmctld) path=/api/v1/hooks/job-start ;;
epilogslurmctld) path=/api/v1/hooks/job-end ;;
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
# Whether the breaker is open is its own file, written only by the hook that opens it, so that
# a hook finishing later with an older view of breaker.json cannot close it again.
open_until=0
[[ -r $state_dir/open_until ]] && open_until=$(<"$state_dir/open_until")
[[ $open_until =~ ^[0-9]+$ ]] || open_until=0
last_error=
[[ $state =~ \"last_error\":\ *\"([^\"]*)\" ]] && last_error=${BASH_REMATCH[1]}

save_breaker() {
    mkdir -p "$state_dir" 2>/dev/null
    printf '{"failures_in_row": %s, "failures_total": %s, "skipped_total": %s, "open_until": %s, "last_error": "%s"}\n' \
        "$in_row" "$total" "$skipped" "$open_until" "$last_error" >"$breaker.tmp.$$" 2>/dev/null &&
        mv -f "$breaker.tmp.$$" "$breaker" 2>/dev/null
}

failed() { # $1: what went wrong
    last_error=${1//\"/\'}
    # Failures in a row are counted in an append-only file (one line each, atomic with O_APPEND),
    # so that hooks failing at the same moment in a job-array burst all count: a read-modify-write
    # of breaker.json would let each of them see the same old count.
    mkdir -p "$state_dir" 2>/dev/null
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
    save_breaker
    mkdir -p "$state_dir" 2>/dev/null
    printf '%(%Y-%m-%dT%H:%M:%S)T %s job=%s %s\n' -1 "$kind" "$job" "$last_error" >>"$state_dir/hooks-$kind.log" 2>/dev/null
    exit 0
}

if ((open_until > now)); then
    skipped=$((skipped + 1))
    save_breaker
    exit 0
fi

# The credential binds method, path and body (nomade_common/munge.py's inline payload: the body
# itself, as hashing it would cost a process): taken from this request, it is good for no other,
# and munged accepts it once.  The payload goes to munge on stdin: a command line is readable by
# every user on this host, and the report holds the job's name and directory.
setting munge_socket ''
socket_opt=()
[[ -n $REPLY ]] && socket_opt=(--socket="$REPLY")
cred=$(munge "${socket_opt[@]}" 2>/dev/null <<<"nomade-http-1 POST $path body"$'\n'"$body") ||
    failed "MungeError: munge could not make a credential (is munged running?)"

# Keep 30% of the limit (at least 0.1 s) to record a failure before the wrapper's kill.
spent=$(((${EPOCHREALTIME/./} - ${start/./}) / 1000)) # ms since this script started
whole=${limit%%.*}
frac=0
[[ $limit == *.* ]] && frac=${limit#*.}
frac=${frac}000
limit_ms=$((10#${whole:-0} * 1000 + 10#${frac:0:3}))
reserve=$((limit_ms * 3 / 10 < 100 ? 100 : limit_ms * 3 / 10))
budget=$((limit_ms - reserve - spent))
((budget > 50)) || failed "TimeoutError: no time left to reach the aggregator"
printf -v wait_s '%d.%03d' $((budget / 1000)) $((budget % 1000))

if [[ $scheme == https ]]; then
    # curl reads the credential from a pipe (-H @file), not its command line: no other user
    # sees it in the process list.
    setting tls_ca ''
    ca=()
    [[ -n $REPLY ]] && ca=(--cacert "$REPLY")
    answer=$(printf '%s' "$body" | curl -sS --max-time "$wait_s" "${ca[@]}" -X POST \
        -H @<(printf 'Authorization: MUNGE %s\n' "$cred") -H 'Content-Type: application/json' \
        --data-binary @- -w '\n%{http_code}' "https://$url$path" 2>&1) ||
        failed "CurlError: ${answer//[$'\n\r']/ }"
    code=${answer##*$'\n'}
    answer=${answer%$'\n'*}
    [[ $code == 200 ]] || failed "HTTPError: HTTP Error $code"
else
    exec 3<>"/dev/tcp/$host/$port" 2>/dev/null || failed "ConnectionRefusedError: cannot connect to $host:$port"
    printf 'POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: MUNGE %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
        "$path" "$host" "$cred" "${#body}" "$body" >&3 2>/dev/null || failed "BrokenPipeError: sending to $host:$port"
    IFS= read -r -t "$wait_s" status <&3 || failed "TimeoutError: no answer from $host:$port within ${wait_s} s"
    [[ $status == "HTTP/1."?" 200"* ]] || failed "HTTPError: ${status%$'\r'}"
    answer=
    while IFS= read -r -t "$wait_s" line <&3; do answer+=$line; done
    answer+=$line
    exec 3<&-
fi
[[ $answer =~ \"ok\":\ *true ]] || failed "ValueError: unexpected answer from the aggregator"
if ((in_row > 0 || open_until > 0)) || [[ -e $state_dir/failures || -e $state_dir/open_until ]]; then
    in_row=0
    open_until=0
    rm -f "$state_dir/failures" "$state_dir/open_until" 2>/dev/null
    save_breaker
fi
exit 0
