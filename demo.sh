#!/usr/bin/env bash
# NØMADE demo: installs what is needed, brings up the single-host Slurm cluster (two virtual
# nodes), starts the aggregator and one agent per node, installs the hooks, submits a small mixed
# workload and shows what NØMADE recorded.  Run as root on Debian 12:  ./demo.sh
set -euo pipefail
cd "$(dirname "$0")"
say() { printf '\n== %s\n' "$*"; }

say "installing Debian packages (Slurm, munge, MariaDB, sysstat) and NØMADE"
slurm-conf/install-deps.sh
python3 -m pip install --quiet --disable-pip-version-check -e ".[aggregator]"

say "bringing up the Slurm cluster"
slurm-conf/cluster-up.sh

DEMO=${NOMADE_DEMO_DIR:-/var/lib/nomade-demo}
mkdir -p "$DEMO/jobs" && chmod 755 "$DEMO" && chmod 1777 "$DEMO/jobs"
export NOMADE_CONFIG=$DEMO/nomade.toml
cat >"$NOMADE_CONFIG" <<TOML
[general]
cluster_name = "nomadedev"
data_dir = "$DEMO/data"
[agent]
interval_seconds = 2.0
heartbeat_seconds = 2.0
spool_dir = "$DEMO/spool"
[aggregator]
reconcile_delay_seconds = 1.0
[hooks]
prefix = "/opt/nomade/hooks"
state_dir = "$DEMO/hookstate"
task_notice = true
[collectors.queue]
interval_seconds = 5.0
[collectors.node_state]
interval_seconds = 5.0
TOML

say "starting NØMADE: database, hooks, aggregator, agents for node1 and node2"
nomadectl init
nomadectl install-hooks --include /etc/slurm/nomade-hooks.conf
scontrol reconfigure
slurm-conf/cluster-up.sh --hooks-changed # restarts slurmctld if it started without PrologSlurmctld
nomadectl start --nodes node1,node2

say "submitting a small mixed workload as user alice"
submit() {
    local name=$1
    shift
    sbatch --parsable --uid=alice --gid=alice -J "$name" -D "$DEMO/jobs" -o "$DEMO/jobs/%x-%j.out" "$@"
}
PY=/usr/bin/python3
ok=$(submit fits --mem=400M -t 2 --wrap "$PY -c 'b=bytearray(200<<20); import time; [b.__setitem__(i,1) for i in range(0,len(b),4096)]; time.sleep(6)'")
bug=$(submit buggy -t 2 --wrap "sleep 5; exit 3")
oom=$(submit too-small --mem=150M -t 2 --wrap "$PY -c 'import time; time.sleep(3); x=[bytearray(20<<20) for _ in range(40)]; [c.__setitem__(i,1) for c in x for i in range(0,len(c),4096)]'")
two=$(submit two-nodes -N 2 --ntasks-per-node=1 --mem=300M -t 2 --wrap "srun $PY -c 'b=bytearray(100<<20); import time; time.sleep(6)'")
gone=$(submit cancelled -t 2 --wrap "sleep 120")
echo "jobs: fits=$ok buggy=$bug too-small=$oom two-nodes=$two cancelled=$gone"
sleep 6
scancel "$gone"

say "waiting for the jobs to end and for sacct to confirm their outcomes"
for _ in $(seq 1 90); do
    pending=$(python3 - "$DEMO/data/nomade.db" "$ok,$bug,$oom,$two,$gone" <<'PY'
import sqlite3, sys
ids = [int(i) for i in sys.argv[2].split(",")]
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
q = f"SELECT count(*) FROM jobs WHERE reconcile = 'done' AND job_id IN ({','.join('?' * len(ids))})"
print(len(ids) - conn.execute(q, ids).fetchone()[0])
PY
)
    [[ $pending == 0 ]] && break
    sleep 2
done

say "nomadectl status"
nomadectl status
say "nomadectl nodes   (Slurm's view beside each node's agent)"
nomadectl nodes
say "nomadectl queue   (why jobs wait, stuck jobs, job arrays)"
nomadectl queue
say "nomadectl jobs --user alice"
nomadectl jobs --user alice --limit 5
say "nomadectl job $two   (the two-node job)"
nomadectl job "$two"
say "the notice NØMADE printed into job $ok's own output"
head -n 1 "$DEMO/jobs/fits-$ok.out"
cat <<MSG

The cluster and NØMADE keep running.  Try: NOMADE_CONFIG=$NOMADE_CONFIG nomadectl job $oom
Stop NØMADE:  NOMADE_CONFIG=$NOMADE_CONFIG nomadectl stop && NOMADE_CONFIG=$NOMADE_CONFIG nomadectl uninstall-hooks
Stop Slurm:   slurm-conf/cluster-down.sh
MSG
