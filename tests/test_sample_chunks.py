"""Samples as NØMADE keeps them: packed into chunks losslessly, compacted without loss or
duplicates, reduced after the raw retention, and `nomadectl db` saying what the store holds."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

import nomadectl as ctl
from aggregator import store
from aggregator.store import samplecodec as codec
from aggregator.store.sqlite import samples
from aggregator.views import query
from nomade_common.wire import SAMPLE_FIELDS

READINGS = SAMPLE_FIELDS[2:]
T0 = 1_790_000_000.0


# -- the codec -----------------------------------------------------------------------------------
def _column(rng: random.Random, n: int) -> list:
    """One field's values as agents (and hostile senders) send them: None, small and huge
    integers (to 2^63 - 1), fractions, integral floats, mixed."""
    style = rng.choice(["none", "small", "huge", "fraction", "mixed", "counter", "page"])

    def one(i: int):
        if style == "none" or rng.random() < 0.1:
            return None
        if style == "small":
            return rng.randint(0, 5000)
        if style == "huge":
            return rng.choice([(1 << 63) - 1, (1 << 53) + 1, rng.randint(0, (1 << 63) - 1)])
        if style == "fraction":
            return rng.choice([rng.random() * 1e6, rng.uniform(0, 1e300), 5e-324, float(i)])
        if style == "counter":
            return i * 1_000_003 + rng.randint(0, 999)
        if style == "page":
            return 4096 * rng.randint(0, 1 << 20)
        return rng.choice([0, 7, 2.5, float(1 << 60), (1 << 53) - 1, 0.1])

    return [one(i) for i in range(n)]


def _same(a, b, column: list) -> bool:
    """B is A as the store gives it back: None as None, the same value, and an int as an int
    where its field held only integers."""
    if a is None or b is None:
        return a is b
    if all(type(v) is int for v in column if v is not None):
        return a == b and type(b) is int
    return a == b


def test_every_accepted_value_comes_back_exactly():
    rng = random.Random(15)
    for _ in range(300):
        n = rng.choice([1, 2, 3, 17, 360])
        columns = [_column(rng, n) for _ in READINGS]
        t = [T0 + 10.0 * i + rng.random() * 0.01 for i in range(n)]
        rows = [[t[i], *(c[i] for c in columns)] for i in range(n)]
        back = codec.decode_rows(codec.encode_rows(rows))
        assert len(back) == n
        for want, got in zip(rows, back, strict=True):
            for c, (f, a, b) in enumerate(zip(("t", *READINGS), want, got, strict=True)):
                if f in codec.FLOAT_FIELDS and a is not None:  # seconds: REAL, as SQLite had them
                    assert b == float(a) and type(b) is float, (f, a, b)
                else:
                    assert _same(a, b, [r[c] for r in rows]), (f, a, b, [r[c] for r in rows])


def test_real_looking_series_pack_to_a_few_bytes_per_sample():
    """Counters that grow, memory that moves in pages, jittered sample times: far smaller than
    the 8 bytes a value takes as a number."""
    rng = random.Random(7)
    rows, cpu, mem, rd = [], 0, 500 << 20, 0
    t = T0
    for _ in range(360):
        t += 10 + rng.gauss(0, 0.004)
        cpu += rng.randint(9_500_000, 10_000_000)
        mem += 4096 * rng.randint(-30, 30)
        rd += 4096 * rng.randint(0, 50)
        rows.append(
            [t, cpu / 1e6, cpu * 0.9 / 1e6, cpu * 0.1 / 1e6, mem, mem + (1 << 20), mem // 2]
            + [mem // 4, 0, 2 << 30, rd, rd // 2, rd, rd // 2, rd * 3, rd, rd // 4096, 9, 3]
        )
    blob = codec.encode_rows(rows)
    assert codec.decode_rows(blob) == rows
    assert len(blob) / len(rows) < 19 * 8 / 4  # at least 4x under the raw numbers


def test_a_damaged_chunk_is_refused_in_one_line():
    blob = codec.encode_rows([[T0, *([1] * len(READINGS))]])
    for bad in (b"", b"junk", blob[:-3], codec._compressor.compress(b"NSC1" + b"\0" * 40)):
        with pytest.raises(codec.ChunkError) as err:
            codec.decode(bad)
        assert "\n" not in str(err.value)


# -- compaction ----------------------------------------------------------------------------------
@pytest.fixture()
def db(tmp_path):
    conn = store.open_store(str(tmp_path / "nomade.db"))
    yield conn
    conn.close()


def _job(conn, job_id: int, user: str = "alice") -> int:
    with store.transaction(conn):
        uid = store.Ingest("dev").job_uid(conn, job_id, T0, T0)
        conn.execute(
            "UPDATE jobs SET user = ?, start_time = ?, node_list = 'node1' WHERE uid = ?",
            (user, T0, uid),
        )
    return uid


def _rows(uid: int, start: int, n: int, rng: random.Random) -> list[list]:
    out = []
    for i in range(start, start + n):
        mem = (200 << 20) + 4096 * rng.randint(0, 5000)
        out.append(
            [uid, T0 + 10 * i + rng.random() * 0.01, i * 9.5, i * 9.0, i * 0.5, mem, mem + 4096]
            + [mem // 2, mem // 4, None if i % 5 else 0, 1 << 30, None, None, i * 4096]
            + [i * 8192, i * 5000 + rng.randint(0, 99), i * 7000, i * 3, i * 2, 1 + i % 3]
        )
    return out


def _land(conn, node: str, rows: list[list], now: float) -> None:
    with store.transaction(conn):
        samples.land(conn, node, [list(r) for r in rows], now)


def _expected(rows_by_node: dict[str, list[list]]) -> list[tuple]:
    return sorted((r[0], node, *r[1:]) for node, rows in rows_by_node.items() for r in rows)


def test_compaction_keeps_every_sample_once_and_reads_the_same_before_and_after(db):
    rng = random.Random(1)
    a, b = _job(db, 101), _job(db, 102)
    sent = {"node1": [], "node2": []}
    for step in range(30):  # envelopes of both jobs, crossing hour boundaries
        for node in sent:
            rows = _rows(a, step * 20, 20, rng) + _rows(b, step * 20, 20, rng)
            sent[node] += rows
            _land(db, node, rows, T0 + step)
    # An envelope sent again under a new key (an agent's outbox replayed): same times.
    _land(db, "node1", [list(r) for r in sent["node1"][:40]], T0 + 99)
    before = store.all_samples(db)
    view_before = json.dumps(query.job(db, 101), sort_keys=True)
    assert before == _expected(sent)  # visible and exact before any compaction
    moved = 0
    while True:  # small steps, as the compactor takes them
        with store.transaction(db):
            n = store.compact(db, T0 + 1000, 300)
        moved += n
        if not n:
            break
    assert moved == sum(len(r) for r in sent.values()) + 40
    assert store.sample_backlog(db)["envelopes"] == 0
    assert store.all_samples(db) == before
    assert json.dumps(query.job(db, 101), sort_keys=True) == view_before
    sizes = store.sample_sizes(db)
    assert sizes["raw_samples"] == len(before)  # the replayed times were not stored twice
    job = query.job(db, 101)
    assert [n["samples"] for n in job["nodes"]] == [600, 600]


def test_landed_envelopes_wait_until_old_enough_or_too_many(db):
    uid = _job(db, 7)
    rng = random.Random(2)
    for i in range(5):
        _land(db, "node1", _rows(uid, i * 4, 4, rng), T0 + i)
    assert not store.compaction_due(db, T0 - 1, 10)
    assert store.compaction_due(db, T0 + 0.5, 10)  # the first arrived before it
    assert store.compaction_due(db, T0 - 1, 3)  # more than 3 wait
    with store.transaction(db):
        assert store.compact(db, T0 - 1, 10**6, 3) == 8  # all but the newest 3 envelopes
    assert store.sample_backlog(db)["envelopes"] == 3


# -- retention -----------------------------------------------------------------------------------
def test_retention_keeps_a_summary_and_a_reduced_curve(db):
    rng = random.Random(3)
    uid = _job(db, 55)
    rows = _rows(uid, 0, 3000, rng)
    rows[1234][5] = 7 << 30  # one spike of memory: the summary and the curve both keep it
    _land(db, "node1", rows, T0)
    with store.transaction(db):
        store.compact(db, T0 + 1, 10**6)
    before = store.job_node_summaries(db, uid)[0]
    with store.transaction(db):
        assert store.reduce_old(db, T0 - 1, 10) == 0  # not old enough yet
        assert store.reduce_old(db, rows[-1][1] + 1, 10) == 1
    after = store.job_node_summaries(db, uid)[0]
    assert after == before  # samples, times, CPU, peak memory, I/O and per-reading stats
    assert after["mem_peak_bytes"] == 7 << 30
    curve = store.job_samples(db, uid)
    assert 100 <= len(curve) <= samples.REDUCED_POINTS
    assert max(p["mem_current_bytes"] for p in curve) == 7 << 30
    assert curve[-1]["cpu_usage_seconds"] == rows[-1][2]  # counters end where the job ended
    sizes = store.sample_sizes(db)
    assert sizes["raw_samples"] == 0 and sizes["reduced_series"] == 1
    job = query.job(db, 55)
    assert job["nodes"][0]["samples"] == 3000 and job["mem_peak_bytes"] == 7 << 30


# -- nomadectl db -------------------------------------------------------------------------------
def _config(tmp_path) -> str:
    path = tmp_path / "nomade.toml"
    path.write_text(
        f'[general]\ndata_dir = "{tmp_path}"\n[aggregator]\nsamples_raw_retention_days = 1.0\n'
    )
    return str(path)


def test_db_status_compact_and_prune_say_what_they_did(tmp_path):
    cfg = _config(tmp_path)
    conn = store.open_store(str(tmp_path / "nomade.db"))
    uid = _job(conn, 9)
    rng = random.Random(4)
    _land(conn, "node1", _rows(uid, 0, 500, rng), T0)
    conn.close()
    runner = CliRunner()
    out = runner.invoke(ctl.main, ["--config", cfg, "db", "status"])
    assert out.exit_code == 0, out.output
    assert "Waiting for compaction: 1 envelopes, 500 samples" in out.output
    assert "kept 1 days after a job's last sample" in out.output
    out = runner.invoke(ctl.main, ["--config", cfg, "db", "compact"])
    assert out.exit_code == 0, out.output
    assert "compacted 500 landed samples" in out.output
    status = json.loads(runner.invoke(ctl.main, ["--config", cfg, "db", "status", "--json"]).output)
    assert status["raw_samples"] == 500 and status["backlog"]["samples"] == 0
    assert status["old_layout_left"] is None  # a new store has no old layout to move
    out = runner.invoke(ctl.main, ["--config", cfg, "db", "prune"])
    assert out.exit_code == 0, out.output
    assert "reduced the raw samples of 1 job-nodes" in out.output
    status = json.loads(runner.invoke(ctl.main, ["--config", cfg, "db", "status", "--json"]).output)
    assert status["raw_samples"] == 0 and status["reduced_series"] == 1


def test_samples_arriving_after_the_reduction_join_its_summary(db):
    """An agent's outbox can hold samples past the raw retention: they add to what was kept
    rather than hiding it, and a later retention pass keeps both."""
    rng = random.Random(5)
    uid = _job(db, 66)
    rows = _rows(uid, 0, 1000, rng)
    _land(db, "node1", rows, T0)
    with store.transaction(db):
        store.compact(db, T0 + 1, 10**6)
        assert store.reduce_old(db, rows[-1][1] + 1, 10) == 1
    late = _rows(uid, 5000, 1, rng)
    late[0][5] = 9 << 30  # the late sample holds the job's peak
    _land(db, "node1", late, T0 + 2)
    with store.transaction(db):
        store.compact(db, T0 + 3, 10**6)
    for reduce_again in (False, True):
        if reduce_again:
            with store.transaction(db):
                assert store.reduce_old(db, late[0][1] + 1, 10) == 1
        node = store.job_node_summaries(db, uid)[0]
        assert node["samples"] == 1001
        assert node["first_t"] == rows[0][1] and node["last_t"] == late[0][1]
        assert node["mem_peak_bytes"] == 9 << 30
        assert store.job_samples(db, uid)[-1]["t"] == late[0][1]


def test_summaries_of_huge_counters_are_exact(db):
    uid = _job(db, 77)
    rows = _rows(uid, 0, 3, random.Random(6))
    rows[1][13] = (1 << 53) + 1  # proc_read_bytes past a double's exact integers
    _land(db, "node1", rows, T0)
    assert store.job_node_summaries(db, uid)[0]["read_bytes"] == (1 << 53) + 1
    with store.transaction(db):
        store.compact(db, T0 + 1, 10**6)
        store.reduce_old(db, rows[-1][1] + 1, 10)
    assert store.job_node_summaries(db, uid)[0]["read_bytes"] == (1 << 53) + 1


def test_a_plan_made_stale_by_another_compaction_writes_nothing(db):
    """The compactor prepares on a snapshot; if `nomadectl db compact` moved the same
    envelopes meanwhile, its plan must not write them a second time."""
    uid = _job(db, 88)
    rng = random.Random(8)
    _land(db, "node1", _rows(uid, 0, 50, rng), T0)
    stale = store.plan_compaction(db, T0 + 1, 10**6)
    with store.transaction(db):
        assert store.compact(db, T0 + 1, 10**6) == 50
    _land(db, "node1", _rows(uid, 50, 50, rng), T0 + 2)
    with store.transaction(db):
        assert store.apply_compaction(db, stale) == 0
        assert store.compact(db, T0 + 3, 10**6) == 50
    assert store.sample_sizes(db)["raw_samples"] == 100
    assert len(store.all_samples(db)) == 100


def test_a_replayed_time_keeps_the_value_stored_first_through_seals(db):
    uid = _job(db, 91)
    base = _rows(uid, 0, 2, random.Random(9))
    base[0][-1] = 1
    _land(db, "node1", [base[0]], T0)
    with store.transaction(db):
        store.compact(db, T0 + 1, 10**6, now=T0)
    _land(db, "node1", [base[1]], T0 + 1)
    with store.transaction(db):
        store.compact(db, T0 + 2, 10**6, now=T0)
    replay = list(base[0])
    replay[-1] = 2  # the same job, node and time again, another value
    _land(db, "node1", [replay], T0 + 2)
    for now in (T0, T0 + 10**6):  # a new part, then the window merged
        with store.transaction(db):
            store.compact(db, T0 + 3, 10**6, now=now)
        assert [r[-1] for r in store.all_samples(db)][0] == 1


def test_a_fraction_in_an_integer_field_comes_back_as_sent(db):
    uid = _job(db, 92)
    rows = _rows(uid, 0, 2, random.Random(10))
    rows[0][5] = 2.5  # mem_current_bytes
    _land(db, "node1", rows, T0)
    assert [r[6] for r in store.all_samples(db)] == [2.5, rows[1][5]]  # (uid, node, t, ...)
