import collections
import sqlite3

import pytest

from aggregator import store
from aggregator.store import Ingest, Rejected
from aggregator.store.sqlite import samples
from nomade_common import wire

WIDTH = len(wire.SAMPLE_FIELDS)


def col(name):
    """Where reading NAME (or t) is in a row of `store.all_samples`: (job_uid, node, t, ...)."""
    return wire.SAMPLE_FIELDS.index(name) + 1


def by_job(c, column="job_id"):
    """Each job row's COLUMN by its uid."""
    return dict(c.execute(f"SELECT uid, {column} FROM jobs").fetchall())


def stored_by_time(c):
    """Every stored sample as (job_id, node, t, *readings), by time."""
    job_id = by_job(c)
    return sorted(((job_id[s[0]], *s[1:]) for s in store.all_samples(c)), key=lambda s: s[2])


def row(job, t, mem=None):
    r = [None] * WIDTH
    r[0], r[1] = job, t
    r[wire.SAMPLE_FIELDS.index("mem_peak_bytes")] = mem
    return r


def test_migrations_are_recorded_and_applied_once(tmp_path):
    path = str(tmp_path / "m.db")
    conn = store.open_store(path)
    assert store.schema_version(conn) == store.SCHEMA_VERSION
    assert store.migrate(conn) == []
    conn.close()


def test_an_envelope_is_stored_once_however_often_it_arrives(db):
    ing = Ingest("c")
    env = wire.Envelope(wire.SAMPLES, "node1", 7, 1, {"rows": [row(11, 1.0), row(11, 2.0)]})
    results = [db.call(lambda c: ing.apply_envelope(c, env)) for _ in range(3)]
    assert results == ["stored", "duplicate", "duplicate"]
    n = db.call(lambda c: len(store.all_samples(c)))
    assert n == 2


def test_the_same_seq_from_a_new_outbox_epoch_is_new_data(db):
    ing = Ingest("c")
    a = wire.Envelope(wire.SAMPLES, "node1", 1, 1, {"rows": [row(11, 1.0)]})
    b = wire.Envelope(wire.SAMPLES, "node1", 2, 1, {"rows": [row(11, 2.0)]})
    assert [db.call(lambda c, e=e: ing.apply_envelope(c, e)) for e in (a, b)] == [
        "stored",
        "stored",
    ]


def test_a_bad_row_rejects_its_envelope_and_keeps_everything_stored_before(db):
    ing = Ingest("c")
    good = wire.Envelope(wire.SAMPLES, "n", 1, 1, {"rows": [row(5, 1.0)]})
    # Its first rows are good, one of them from a job not seen before; its third is not a row.
    bad = wire.Envelope(wire.SAMPLES, "n", 1, 2, {"rows": [row(5, 2.0), row(6, 2.0), ["x"]]})
    db.call(lambda c: ing.apply_envelope(c, good))
    with pytest.raises(Rejected, match="sample row 2"):
        db.call(lambda c: ing.apply_envelope(c, bad))
    counts = db.call(
        lambda c: (
            len(store.all_samples(c)),
            c.execute("SELECT count(*) FROM received").fetchone()[0],
            c.execute("SELECT count(*) FROM jobs").fetchone()[0],
        )
    )
    assert counts == (1, 1, 1)  # the bad envelope left nothing behind: no key, no job 6
    # Job 6 arrives again in a good envelope: it gets a row (no stale cached uid).
    db.call(
        lambda c: ing.apply_envelope(
            c, wire.Envelope(wire.SAMPLES, "n", 1, 3, {"rows": [row(6, 3.0)]})
        )
    )
    jobs = db.call(stored_by_time)
    assert [r[0] for r in jobs] == [5, 6]


def test_samples_before_the_hook_report_join_the_same_job_row(db):
    ing = Ingest("c")
    db.call(
        lambda c: ing.apply_envelope(
            c, wire.Envelope(wire.SAMPLES, "n", 1, 1, {"rows": [row(9, 1.0)]})
        )
    )
    db.call(
        lambda c: ing.job_start(c, {"job_id": 9, "submit_time": 100.0, "user": "alice"}, None, 5.0)
    )
    rows = db.call(lambda c: c.execute("SELECT uid, user, submit_time FROM jobs").fetchall())
    assert [tuple(r) for r in rows] == [(1, "alice", 100.0)]


def test_a_reused_job_id_gets_its_own_row_and_new_samples_go_to_it(db):
    ing = Ingest("c")
    db.call(lambda c: ing.job_start(c, {"job_id": 3, "submit_time": 100.0}, None, 1.0))
    db.call(lambda c: ing.job_start(c, {"job_id": 3, "submit_time": 900.0}, None, 2.0))
    db.call(
        lambda c: ing.apply_envelope(
            c, wire.Envelope(wire.SAMPLES, "n", 1, 1, {"rows": [row(3, 950.0)]})
        )
    )
    got = db.call(lambda c: [by_job(c, "submit_time")[s[0]] for s in store.all_samples(c)])
    assert got == [900.0]


def test_readers_see_committed_data_while_the_writer_works(db, tmp_path):
    ing = Ingest("c")
    db.call(
        lambda c: ing.apply_envelope(
            c, wire.Envelope(wire.SAMPLES, "n", 1, 1, {"rows": [row(1, 1.0)]})
        )
    )
    reader = store.connect(str(tmp_path / "n.db"), readonly=True)
    assert len(store.all_samples(reader)) == 1
    with pytest.raises(sqlite3.OperationalError):
        samples.land(reader, "n", [row(1, 2.0)], 3.0)


def test_the_end_report_without_submit_time_completes_the_started_row(db):
    ing = Ingest("c")
    db.call(
        lambda c: ing.job_start(c, {"job_id": 21, "submit_time": 100.0, "user": "alice"}, None, 1.0)
    )
    db.call(lambda c: ing.job_end(c, {"job_id": 21, "end_time": 150.0}, 2.0, 150.0))
    rows = db.call(
        lambda c: c.execute("SELECT job_id, user, end_time, reconcile FROM jobs").fetchall()
    )
    assert [tuple(r) for r in rows] == [(21, "alice", 150.0, "pending")]


def test_an_end_stored_before_its_start_leaves_one_ended_job(db):
    # Over HTTP a short job's end can be stored while its start is still being scored.
    ing = Ingest("c")
    db.call(lambda c: ing.job_end(c, {"job_id": 31, "end_time": 150.0}, 2.0, 150.0))
    db.call(
        lambda c: ing.job_start(
            c,
            {"job_id": 31, "submit_time": 100.0, "start_time": 140.0, "user": "alice"},
            None,
            151.0,
        )
    )
    rows = db.call(
        lambda c: c.execute(
            "SELECT job_id, user, submit_time, start_time, end_time, reconcile FROM jobs"
        ).fetchall()
    )
    assert [tuple(r) for r in rows] == [(31, "alice", 100.0, 140.0, 150.0, "pending")]
    # The job has ended: samples of the same id two hours later are a new run's, not this one's.
    db.call(
        lambda c: ing.apply_envelope(
            c, wire.Envelope(wire.SAMPLES, "n", 1, 1, {"rows": [row(31, 150.0 + 7200)]})
        )
    )

    def runs(c):
        per_uid = collections.Counter(s[0] for s in store.all_samples(c))
        jobs = c.execute("SELECT uid, end_time FROM jobs ORDER BY uid").fetchall()
        return [(r[0], r[1], per_uid[r[0]]) for r in jobs]

    assert [r[1:] for r in db.call(runs)] == [(150.0, 0), (None, 1)]


def test_a_start_report_stores_the_job_its_features_and_its_verdict_together(db):
    ing = Ingest("c")
    verdict = {
        "model_version": "v1",
        "p_fail": 0.9,
        "health": 0.1,
        "probs": {"OUT_OF_MEMORY": 0.8},
        "risk": "high",
        "warned": True,
        "lines": ["NØMADE: high risk (0.90)"],
        "reasons": {"main_outcome": "OUT_OF_MEMORY"},
    }
    uid = db.call(
        lambda c: ing.job_start(
            c, {"job_id": 5, "submit_time": 1.0}, None, 2.0, b"\0" * 8, 1, verdict
        )
    )
    got = db.call(
        lambda c: (
            c.execute(
                "SELECT feature_version FROM job_features WHERE job_uid = ?", (uid,)
            ).fetchone()[0],
            tuple(
                c.execute(
                    "SELECT p_fail, warned, message FROM verdicts WHERE job_uid = ?", (uid,)
                ).fetchone()
            ),
        )
    )
    assert got == (1, (0.9, 1, "NØMADE: high risk (0.90)"))


def test_samples_of_a_reused_job_id_start_a_new_run_and_late_ones_keep_theirs(db):
    """Job ids come round again (imported history, a controller reset): samples from long after
    the old run ended belong to a new run, while samples resent late belong to the old one."""
    ing = Ingest("c")
    db.call(
        lambda c: ing.upsert_job(
            c,
            {
                "job_id": 281,
                "submit_time": 100.0,
                "start_time": 110.0,
                "end_time": 1000.0,
                "outcome": "COMPLETED",
            },
            1000.0,
        )
    )
    late = wire.Envelope(wire.SAMPLES, "n", 1, 1, {"rows": [row(281, 990.0)]})
    new = wire.Envelope(wire.SAMPLES, "n", 1, 2, {"rows": [row(281, 90_000.0)]})
    for env in (late, new):
        db.call(lambda c, env=env: ing.apply_envelope(c, env))

    def runs(c):
        times = collections.defaultdict(list)
        for s in store.all_samples(c):
            times[s[0]].append(s[col("t")])
        jobs = c.execute(
            "SELECT uid, submit_time FROM jobs WHERE job_id = 281 ORDER BY uid"
        ).fetchall()
        return [(r[1], times[r[0]]) for r in jobs]

    assert db.call(runs) == [(100.0, [990.0]), (None, [90_000.0])]
    # The new run's start report completes the placeholder rather than adding a third row.
    db.call(
        lambda c: ing.upsert_job(
            c, {"job_id": 281, "submit_time": 89_990.0, "user": "alice"}, 90_001.0
        )
    )
    assert (
        db.call(lambda c: c.execute("SELECT count(*) FROM jobs WHERE job_id = 281").fetchone()[0])
        == 2
    )


@pytest.mark.parametrize("count", [1, 3, 63, 64, 65, 257, 341])
@pytest.mark.parametrize("limit", [32766, 999, 100])
def test_every_row_of_an_envelope_is_stored_whatever_its_size(db, count, limit):
    """Rows go in as multi-row INSERTs sized to SQLite's parameter limit (999 before 3.32)."""
    ing = Ingest("c")
    rows = [row(100 + i % 7, float(i), mem=i * 1000) for i in range(count)]
    env = wire.Envelope(wire.SAMPLES, "node1", 1, 1, {"rows": rows})

    def apply(c):
        old = c.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
        try:
            return ing.apply_envelope(c, env)
        finally:
            c.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, old)

    assert db.call(apply) == "stored"
    stored = db.call(stored_by_time)
    assert [(s[0], s[1], s[2], s[col("mem_peak_bytes")]) for s in stored] == [
        (100 + i % 7, "node1", float(i), i * 1000) for i in range(count)
    ]


def test_the_wal_stays_bounded_while_writes_never_pause(tmp_path):
    """Background checkpoints cannot finish under non-stop writes; the writer then checkpoints
    itself, so the WAL (disk the store uses beside the database) does not grow without end."""
    path = str(tmp_path / "w.db")
    limit = 1 << 20
    w = store.Writer(path, max_wait=0.0, checkpoint_seconds=0.01, wal_limit_bytes=limit)
    w.start()
    ing = Ingest("c")
    try:
        for seq in range(1, 601):  # about 16 MB of samples, one envelope after the other
            rows = [[job, seq * 10.0] + [seq * 1e6 + job] * (WIDTH - 2) for job in range(1, 129)]
            env = wire.Envelope(wire.SAMPLES, "node1", 1, seq, {"rows": rows})
            w.call(lambda c, env=env: ing.apply_envelope(c, env))  # one commit each
        assert w.call(lambda c: len(store.all_samples(c))) == 600 * 128
        wal = tmp_path / "w.db-wal"
        assert (
            wal.stat().st_size < 32 * limit
        )  # 300 times the limit without it, f"the WAL grew to {wal.stat().st_size} bytes"
        assert (tmp_path / "w.db").stat().st_size > 8 * limit  # the data did reach the database
    finally:
        w.stop()


def test_the_jobs_list_is_newest_first_by_submit_time_whatever_the_order_they_were_stored(
    db, tmp_path
):
    from aggregator.views import query

    ing = Ingest("c")
    # Live jobs stored first; then history imported afterwards (older jobs, newer rows); then a
    # running job known only from its samples (no submit time yet: listed by when it was seen).
    for job_id, submit in ((101, 5_000.0), (102, 5_100.0)):
        db.call(
            lambda c, j=job_id, s=submit: ing.job_start(
                c, {"job_id": j, "submit_time": s, "user": "alice"}, None, s + 1
            )
        )
    for job_id, submit in ((11, 1_000.0), (12, 1_100.0)):
        db.call(
            lambda c, j=job_id, s=submit: ing.upsert_job(
                c, {"job_id": j, "submit_time": s, "user": "alice"}, 9_000.0
            )
        )
    db.call(
        lambda c: ing.apply_envelope(
            c, wire.Envelope(wire.SAMPLES, "n", 1, 1, {"rows": [row(103, 5_200.0)]}), now=5_200.0
        )
    )
    reader = store.connect(str(tmp_path / "n.db"), readonly=True)
    assert [j["job_id"] for j in query.jobs(reader)] == [103, 102, 101, 12, 11]
    assert [j["job_id"] for j in query.jobs(reader, user="alice", limit=3)] == [102, 101, 12]
    assert [j["job_id"] for j in query.jobs(reader, since=5_050.0)] == [103, 102]
    # `nomadectl job ID`: the newest run of a reused id, even when an older run was stored later.
    db.call(
        lambda c: ing.upsert_job(c, {"job_id": 101, "submit_time": 900.0, "user": "bob"}, 9_100.0)
    )
    assert store.find_job(reader, 101)["user"] == "alice"
