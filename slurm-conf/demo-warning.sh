#!/usr/bin/env bash
# The demo's warning part: with a model active and the recorded workload (data/workload-v1)
# imported, carol (who asks for too little memory) and grace (who behaves) each submit one job.
# carol's is shaped like the many of hers that ran out of memory, and NØMADE prints its warning
# into that job's own output at start; grace's ordinary job gets none.  Shows both outputs.
#   slurm-conf/demo-warning.sh CONFIG DIR
# CONFIG: the nomade.toml of a running aggregator; DIR: a folder every user may write (mode 1777),
# for the two jobs' scripts and outputs.  Run as root on the dev cluster, whose
# slurm-conf/cluster-up.sh creates carol and grace.  NOMADECTL: the nomadectl to run [nomadectl];
# NOMADE_DEMO_WAIT: seconds to wait for the model, for the jobs and for their outcomes [180].
# ./demo.sh runs it; so does tests/test_demo_warning.py.
set -euo pipefail
say() { printf '\n== %s\n' "$*"; }
die() {
    printf 'demo-warning: ERROR: %s\n' "$*" >&2
    exit 1
}

(($# == 2)) || die "expected two arguments, CONFIG (a nomade.toml) and DIR (a folder), got $#"
config=$1 dir=$2
[[ -f $config ]] || die "CONFIG $config is not a file (expected the aggregator's nomade.toml)"
[[ -d $dir ]] || die "DIR $dir is not a folder (expected one every user may write)"
[[ $(id -u) -eq 0 ]] || die "run as root (the jobs are submitted as carol and grace)"
for user in carol grace; do
    id -u "$user" >/dev/null 2>&1 ||
        die "there is no user $user on this host (slurm-conf/cluster-up.sh creates carol and grace)"
done
nomadectl=${NOMADECTL:-nomadectl}
wait_s=${NOMADE_DEMO_WAIT:-180}
[[ $wait_s =~ ^[0-9]{1,5}$ ]] || die "NOMADE_DEMO_WAIT is $wait_s: expected whole seconds (180)"
ctl() { "$nomadectl" --config "$config" "$@"; }
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }

# carol's 'train' jobs asked for 150 to 400 MB and most ran out of memory; this one asks for
# 200 MB and grows to 400 MB, as theirs did.
cat >"$dir/risky.sh" <<'SH'
#!/bin/bash
#SBATCH --job-name=train_resnet_e20 --account=research --mem=200M --time=4
/usr/bin/python3 train.py
SH
cat >"$dir/train.py" <<'PY'
import time

time.sleep(3)
chunks = []
for _ in range(40):  # 400 MB in 10 MB steps, each page touched
    chunks.append(bytearray(10 << 20))
    for i in range(0, len(chunks[-1]), 4096):
        chunks[-1][i] = 1
    time.sleep(0.1)
PY
# grace's ordinary job: about 40% of what it asks for, for a few seconds.
cat >"$dir/healthy.sh" <<'SH'
#!/bin/bash
#SBATCH --job-name=postproc_stats_v2 --account=research --mem=600M --time=2
/usr/bin/python3 postproc.py
SH
cat >"$dir/postproc.py" <<'PY'
import time

block = bytearray(240 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
time.sleep(4)
PY
chmod 644 "$dir/risky.sh" "$dir/train.py" "$dir/healthy.sh" "$dir/postproc.py"

# The active model, and the one the running aggregator scores with: `nomadectl check` asks the
# aggregator, which answers with the model it has loaded (it looks for a new one every 5 s).
active=$(ctl model list --json | json 'next((m["version"] for m in d if m["active"]), "")') ||
    die "nomadectl model list failed (see above): is the aggregator's database there?"
[[ -n $active ]] || die "no model is active (nomadectl train; nomadectl model list)"
deadline=$((SECONDS + wait_s))
loaded() { ctl check --json --user carol "$dir/risky.sh" 2>/dev/null | json 'd["model"] or ""'; }
until [[ $(loaded 2>/dev/null) == "$active" ]]; do
    ((SECONDS < deadline)) ||
        die "the aggregator has not loaded the active model $active within ${wait_s} s (see its log)"
    sleep 1
done
say "the aggregator scores with model $active; carol and grace check their jobs first"
echo "carol asks for too little memory: in the recorded history 100 of her 232 jobs ran out of it,"
echo "46 of her 77 'train' jobs among them.  This 'train' job asks for 200 MB and needs 400 MB:"
sed -n 2p "$dir/risky.sh"
ctl check --user carol "$dir/risky.sh"
echo
echo "grace's jobs complete (269 of her 279).  This one asks for 600 MB and uses 240 MB:"
sed -n 2p "$dir/healthy.sh"
ctl check --user grace "$dir/healthy.sh"

say "carol submits it anyway, and grace (whose jobs complete) submits an ordinary one"
submit() {
    local user=$1 script=$2
    sbatch --parsable --uid="$user" --gid="$user" -D "$dir" -o "$dir/%x-%j.out" "$script" |
        cut -d';' -f1
}
since=$(date +%Y-%m-%dT%H:%M:%S) # sacct below: this run's jobs only, whatever ids were reused
risky=$(submit carol "$dir/risky.sh") || die "sbatch refused carol's job (see above)"
healthy=$(submit grace "$dir/healthy.sh") || die "sbatch refused grace's job (see above)"
[[ $risky =~ ^[0-9]+$ && $healthy =~ ^[0-9]+$ ]] ||
    die "sbatch gave no job ids (got '$risky' and '$healthy')"
echo "jobs: risky=$risky (carol) healthy=$healthy (grace)"

# Both ended (squeue no longer has them) and Slurm's accounting has their final states.
ended() {
    [[ -z $(squeue -h -o %i -j "$risky,$healthy" 2>/dev/null) ]] || return 1
    local states
    states=$(sacct -n -X -P -o State -S "$since" -j "$risky,$healthy" 2>/dev/null)
    [[ $(grep -cvE '^(PENDING|RUNNING|REQUEUED|SUSPENDED|COMPLETING)?$' <<<"$states") == 2 ]]
}
deadline=$((SECONDS + wait_s))
until ended; do
    ((SECONDS < deadline)) || die "jobs $risky and $healthy did not end within ${wait_s} s (squeue)"
    sleep 1
done
sacct -X -S "$since" -j "$risky,$healthy" -o JobID,User,JobName%20,ReqMem,Timelimit,State%14

risky_out=$dir/train_resnet_e20-$risky.out
healthy_out=$dir/postproc_stats_v2-$healthy.out
for out in "$risky_out" "$healthy_out"; do
    [[ -r $out ]] || die "$out is missing: Slurm wrote no output for that job (see sacct above)"
done
say "the head of carol's job $risky's output ($risky_out)"
head -n 8 "$risky_out"
say "the head of grace's job $healthy's output ($healthy_out): no warning"
head -n 8 "$healthy_out"
say "nomadectl job $risky   (the details the warning points to: its verdict at start and outcome)"
deadline=$((SECONDS + wait_s))
outcome() { ctl job "$risky" --json 2>/dev/null | json 'd["outcome"] or ""'; }
until [[ -n $(outcome 2>/dev/null) ]]; do
    ((SECONDS < deadline)) || break # shown as it is: the outcome line says it is not known yet
    sleep 1
done
ctl job "$risky"

grep -q '^NØMADE: high risk' "$risky_out" ||
    die "carol's job $risky got no warning in its output ($risky_out); see nomadectl job $risky"
if grep -q '^NØMADE: high risk' "$healthy_out"; then
    die "grace's ordinary job $healthy was warned ($healthy_out); see nomadectl job $healthy"
fi
