#!/bin/bash
## The template of four hook wrappers: nomadectl install-hooks writes it as prolog, epilog,
## prologslurmctld and epilogslurmctld, without these lines.  taskprolog, whose output Slurm
## reads, has its own file.
# NØMADE @HOOK@: @PURPOSE@.
# @BODY@ runs in a subshell of this script (no second interpreter to start); past limit_us
# this script kills it, and it always exits 0, so that NØMADE can never drain a node or hold a
# job.  The hook's output is discarded; fd 9 keeps the pipe open until it ends, so end of file
# means the hook is done.
limit_us=1000000
# shellcheck source=/dev/null
exec {hook}< <(exec 9>&1 >/dev/null 2>&1; . "${0%/*}/@BODY@" @HOOK@)
child=$!
# A tenth of the limit is kept for starting and ending this script (slow on a loaded node).
end=$((${EPOCHREALTIME/./} + limit_us * 9 / 10))
while left=$((end - ${EPOCHREALTIME/./})); ((left > 0)); do
    printf -v wait '%d.%06d' $((left / 1000000)) $((left % 1000000))
    read -r -t "$wait" -u "$hook" _ || break
done
((${EPOCHREALTIME/./} < end)) || kill -9 "$child" 2>/dev/null
exit 0
