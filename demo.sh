#!/usr/bin/env bash
# NØMADE demo: installs what is needed, brings up the single-host Slurm cluster (two virtual
# nodes), starts the aggregator and one agent per node, installs the hooks, submits a small mixed
# workload and shows what NØMADE recorded; then imports a recorded history, trains a model on it
# and shows the warning NØMADE prints into a risky job's output at start, beside an ordinary job's
# output that has none.  Run as root on Debian 12:  ./demo.sh
set -euo pipefail
cd "$(dirname "$0")"
say() { printf '\n== %s\n' "$*"; }

say "installing Debian packages (Slurm, munge, MariaDB, sysstat) and NØMADE"
slurm-conf/install-deps.sh
# As a site installs it: a virtual environment on the system's Python under /opt/nomade, its
# commands linked into /usr/local/bin, where every user (alice below) can run them.  With the
# training extra (torch, CPU build, onnx, skl2onnx) for `nomadectl train` below.
slurm-conf/install-nomade.sh aggregator,train
nomadectl=/usr/local/bin/nomadectl
nomade_agent=/usr/local/bin/nomade-agent

say "bringing up the Slurm cluster (users alice and bob; carol and grace of the recorded history)"
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
[security]
keys_dir = "$DEMO/keys"
[alerts]
webhook = true
secrets_file = "$DEMO/alerts-secrets.toml"
[[alerts.rules]]
name = "oom_soon"
kind = "job_memory"
severity = "critical"
window = 60
TOML
# A stand-in for a site's webhook (a chat or ticket system) on loopback: it keeps what NØMADE
# sends it.  Its URL is a secret, so it lives in a file only root can read.
if [[ -f $DEMO/receiver.pid ]]; then kill "$(cat "$DEMO/receiver.pid")" 2>/dev/null || true; fi
cat >"$DEMO/receiver.py" <<'PY'
import http.server, json, socket, sys

class Keep(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        alert = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with open(sys.argv[1], "a") as out:
            print(json.dumps(alert), file=out)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", 0), Keep)
print(server.server_address[1], flush=True)
server.serve_forever()
PY
: >"$DEMO/webhook.jsonl"
python3 "$DEMO/receiver.py" "$DEMO/webhook.jsonl" >"$DEMO/receiver.port" &
echo $! >"$DEMO/receiver.pid"
for _ in $(seq 1 50); do [[ -s $DEMO/receiver.port ]] && break; sleep 0.1; done
(umask 077 && echo "webhook_url = \"http://127.0.0.1:$(cat "$DEMO/receiver.port")/nomade\"" >"$DEMO/alerts-secrets.toml")

say "starting NØMADE: database and server key, node keys, hooks, aggregator, agents"
# A second run of the demo restarts the daemons a first run left running, on the code installed now.
"$nomadectl" stop >/dev/null 2>&1 || true
"$nomadectl" init # the database (mode 0600) and the aggregator's CURVE key pair
# Each node makes its own key pair (its secret never leaves it) and prints "NODE PUBLIC_KEY";
# the head node enrols the collected lines.  Here both nodes are this host.
for node in node1 node2; do
    "$nomade_agent" --make-key --node "$node"
done >"$DEMO/node-keys.txt"
"$nomadectl" keys add --file "$DEMO/node-keys.txt"
"$nomadectl" install-hooks --include /etc/slurm/nomade-hooks.conf
scontrol reconfigure
slurm-conf/cluster-up.sh --hooks-changed # restarts slurmctld if it started without PrologSlurmctld
"$nomadectl" start --nodes node1,node2

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
"$nomadectl" status
say "nomadectl nodes   (Slurm's view beside each node's agent)"
"$nomadectl" nodes
say "nomadectl queue   (why jobs wait, stuck jobs, job arrays)"
"$nomadectl" queue
say "nomadectl jobs --user alice"
"$nomadectl" jobs --user alice --limit 5
say "nomadectl job $two   (the two-node job)"
"$nomadectl" job "$two"
say "the notice NØMADE printed into job $ok's own output"
head -n 1 "$DEMO/jobs/fits-$ok.out"

# An ordinary user: the database is the aggregator's alone (mode 0600), so alice's nomadectl
# asks the aggregator, which knows her by her MUNGE credential and answers with her jobs only.
as_alice() { runuser -u alice -- env NOMADE_CONFIG="$NOMADE_CONFIG" "$nomadectl" "$@"; }
cat >"$DEMO/small-job.sh" <<'SH'
#!/bin/bash
#SBATCH --mem=400M --time=00:05:00 --cpus-per-task=1
python3 -c 'print(sum(range(10**6)))'
SH
chmod 644 "$DEMO/small-job.sh"
say "alice: nomadectl jobs   (her own jobs, through the aggregator's API)"
as_alice jobs --limit 5
say "alice: nomadectl check small-job.sh   (scored before she submits it)"
as_alice check "$DEMO/small-job.sh"
say "bob: nomadectl job $ok   (alice's job: bob gets nothing of it)"
runuser -u bob -- env NOMADE_CONFIG="$NOMADE_CONFIG" "$nomadectl" job "$ok" || true
say "nomadectl import sacct   (a site's accounting history: 1,600 jobs of seven users, recorded on this cluster)"
"$nomadectl" import sacct data/workload-v1/sacct.txt.gz
cat >"$DEMO/train-job.sh" <<'SH'
#!/bin/bash
#SBATCH -J train_resnet_e20 --mem=8G --time=04:00:00
python3 train.py --epochs 20
SH
chmod 644 "$DEMO/train-job.sh"
say "nomadectl check --user heidi train-job.sh   (--mem and --time advice from her own history)"
# Right-sizing needs no model: heidi's earlier 'train' jobs say what this one will likely need.
"$nomadectl" check --user heidi "$DEMO/train-job.sh"
say "nomadectl train   (the job-outcome model, from the finished jobs in the store)"
# Activated only when it meets the activation rule on the most recent jobs (docs/models.md); the
# aggregator loads the active model within seconds and scores every job that starts with it.
t0=$SECONDS
"$nomadectl" train
echo "(trained in $((SECONDS - t0)) s)"
# carol, who asks for too little memory, submits a job like those of hers that ran out of it;
# grace, who behaves, submits an ordinary one: both outputs, side by side.
NOMADECTL=$nomadectl slurm-conf/demo-warning.sh "$NOMADE_CONFIG" "$DEMO/jobs"
say "an alert: alice's job grows toward its 150 MB limit; NØMADE tells the webhook before Slurm kills it"
grows=$(submit grows --mem=150M -t 2 --wrap "$PY -c 'import time
c = []
while True:
    c.append(bytearray(4 << 20)); [c[-1].__setitem__(i, 1) for i in range(0, len(c[-1]), 4096)]; time.sleep(1)'")
echo "job $grows: 4 MB more every second"
shown=""
for _ in $(seq 1 60); do
    shown=$(grep -m1 "\"subject\": \"job $grows\"" "$DEMO/webhook.jsonl" || true)
    [[ -n $shown ]] && break
    sleep 1
done
if [[ -n $shown ]]; then
    python3 -c 'import json, sys; a = json.loads(sys.argv[1])
print("webhook received: [%s] %s: %s" % (a["severity"], a["state"], a["summary"]))' "$shown"
else
    echo "(no alert reached the webhook within 60 s: see $DEMO/data/run/aggregator.log)"
fi
"$nomadectl" alerts --unresolved
say "an admin acknowledges it and silences node2 for a maintenance window (root here; an admin of security.admin_users does the same from any host, through the API)"
acked=$("$nomadectl" alerts --json | python3 -c 'import json, sys
print(next((a["id"] for a in json.load(sys.stdin) if a["subject"] == sys.argv[1]), ""))' "job $grows")
if [[ -n $acked ]]; then "$nomadectl" alerts ack "$acked"; fi
"$nomadectl" alerts silence --subject node2 --for 1h --reason "demo: DIMM swap"
"$nomadectl" alerts silences
say "who may send data: the enrolled node keys (CurveZMQ), and who enrolled them"
"$nomadectl" keys list
"$nomadectl" audit --limit 3
say "an agent whose key nobody enrolled: refused, counted, nothing stored"
"$nomade_agent" --make-key --node intruder >/dev/null # made, never enrolled
timeout 8 "$nomade_agent" --node intruder >/dev/null 2>&1 || true
sleep 2 # refusals are written once a second
"$nomadectl" status | grep -E "agents refused" || echo "(no refusal counted)"
say "the store locked by someone else (an admin's sqlite3 shell left in a transaction)"
# The agents keep sampling; nothing is acknowledged while the writer cannot write, and status
# says so.  Once the lock is gone the backlog is written and the outage is kept as an event.
python3 - "$DEMO/data/nomade.db" <<'PY' &
import sqlite3, sys, time
lock = sqlite3.connect(sys.argv[1], isolation_level=None)
lock.execute("BEGIN IMMEDIATE")
time.sleep(12)
lock.execute("ROLLBACK")
PY
locker=$!
sleep 9
"$nomadectl" status | sed -n 3p
wait "$locker" # that one only: the webhook receiver above keeps running
sleep 4
"$nomadectl" status | sed -n 3p
python3 -c 'import sqlite3, sys
row = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True).execute(
    "SELECT detail FROM events WHERE kind = ? ORDER BY id DESC LIMIT 1", ("store_failed",)).fetchone()
print("event store_failed:", row[0] if row else "(none)")' "$DEMO/data/nomade.db"
say "nomadectl db backup   (a consistent, checked copy while the aggregator keeps writing)"
"$nomadectl" db backup --force "$DEMO/nomade-backup.db"
say "nomadectl db status   (samples landed as received, compacted into chunks per job and node)"
"$nomadectl" db status | sed -n 2,3p
"$nomadectl" db compact
"$nomadectl" db status
say "what the webhook received (the alert, and its resolve once the job was gone)"
python3 -c 'import json, sys
for line in open(sys.argv[1]):
    a = json.loads(line)
    print("[%s] %-9s %s: %s" % (a["severity"], a["state"], a["rule"], a["summary"]))' "$DEMO/webhook.jsonl"
cat <<MSG

The cluster and NØMADE keep running.  Try: NOMADE_CONFIG=$NOMADE_CONFIG $nomadectl job $oom
Stop NØMADE:  NOMADE_CONFIG=$NOMADE_CONFIG $nomadectl stop && NOMADE_CONFIG=$NOMADE_CONFIG $nomadectl uninstall-hooks
Stop Slurm:   slurm-conf/cluster-down.sh
MSG
