"""Who sees what through the aggregator's API (aggregator/views/policy.py), without sockets."""

from __future__ import annotations

import pytest

from aggregator.daemon import api
from aggregator.views import policy
from aggregator.views.policy import Caller, Forbidden

ALICE = Caller(2001, "alice")
BOB = Caller(2002, "bob")
ROOT = Caller(0, "root", admin=True)
NAMELESS = Caller(4242, None)


@pytest.mark.parametrize(
    "uid, name, groups, expected",
    [
        (0, "root", frozenset(), True),
        (2001, "alice", frozenset({"alice"}), False),
        (2001, "alice", frozenset({"alice", "hpcadmin"}), True),  # a member of admin_groups
        (2002, "carol", frozenset(), True),  # named in admin_users
        (4242, None, frozenset(), False),
    ],
)
def test_admins_are_root_the_named_users_and_the_named_groups_members(uid, name, groups, expected):
    assert policy.is_admin(uid, name, groups, ["carol"], ["hpcadmin"]) is expected


def test_only_root_and_slurm_user_may_report_jobs():
    assert policy.may_report(ROOT, 64030)
    assert policy.may_report(Caller(64030, "slurm"), 64030)
    assert not policy.may_report(ALICE, 64030)
    assert not policy.may_report(ALICE, None)  # no such SlurmUser here: root alone


def test_check_scores_as_the_caller_and_only_admins_name_another_user():
    assert policy.check_user(ALICE, None) == "alice"
    assert policy.check_user(ALICE, "alice") == "alice"
    with pytest.raises(Forbidden, match="another user"):
        policy.check_user(ALICE, "bob")
    assert policy.check_user(ROOT, "bob") == "bob"
    with pytest.raises(Forbidden, match="no user name"):
        policy.check_user(NAMELESS, None)


def test_a_user_sees_only_their_own_jobs_by_uid_or_else_by_name():
    alices = {"job_id": 1, "user": "alice", "user_id": 2001}
    assert policy.job_visible(ALICE, alices)
    assert not policy.job_visible(BOB, alices)
    assert policy.job_visible(ROOT, alices)
    assert not policy.job_visible(ALICE, None)
    # a uid is what the credential proves: a name that matches another uid's job is not enough
    assert not policy.job_visible(ALICE, {"user": "alice", "user_id": 9999})
    assert policy.job_visible(ALICE, {"user": "alice", "user_id": None})
    assert not policy.job_visible(NAMELESS, {"user": None, "user_id": None})


def test_listing_jobs_is_for_the_caller_whatever_user_is_named():
    assert policy.jobs_user(ALICE, None) == ("alice", True)
    assert policy.jobs_user(ALICE, "alice") == ("alice", True)
    assert policy.jobs_user(ALICE, "bob") == ("alice", False)  # nothing, as squeue -u bob would
    assert policy.jobs_user(ROOT, "bob") == ("bob", True)
    assert policy.jobs_user(ROOT, None) == (None, True)
    assert policy.jobs_user(NAMELESS, None)[1] is False


@pytest.mark.parametrize(
    "text, flags",
    [
        ("none", set()),
        ("jobs,nodes", {"jobs", "nodes"}),
        (" Usage, USERS ", {"usage", "users"}),
        ("", set()),
    ],
)
def test_private_data_setting(text, flags):
    assert policy.parse_private_data(text) == flags


def test_private_data_from_scontrol_show_config():
    shown = (
        "PriorityType            = priority/basic\n"
        "PrivateData             = jobs,usage\n"
        "ProctrackType = x\n"
    )
    assert policy.private_data_from_config(shown) == {"jobs", "usage"}
    assert policy.private_data_from_config("PrivateData             = none\n") == set()
    assert policy.private_data_from_config("nothing here\n") is None


QUEUE = {
    "partitions": [{"partition": "debug", "running": 2, "pending": 2}],
    "pending": [{"job_id": 1, "user": "alice"}, {"job_id": 2, "user": "bob"}],
    "stuck": [{"job_id": 3, "user": "bob", "partition": "debug"}],
    "arrays": [{"array_job_id": 4, "user": "alice"}],
}


def test_private_jobs_leave_a_user_only_their_own_jobs_in_the_queue_view():
    view = policy.queue_view(ALICE, frozenset({"jobs"}), QUEUE)
    assert [j["job_id"] for j in view["pending"]] == [1]
    assert view["stuck"] == [] and len(view["arrays"]) == 1
    assert view["partitions"] == QUEUE["partitions"]  # counts, not jobs
    assert policy.queue_view(ROOT, frozenset({"jobs"}), QUEUE) == QUEUE
    assert policy.queue_view(ALICE, frozenset(), QUEUE) == QUEUE


def test_private_users_blank_other_users_names_but_keep_the_jobs():
    view = policy.queue_view(ALICE, frozenset({"users"}), QUEUE)
    assert [(j["job_id"], j["user"]) for j in view["pending"]] == [(1, "alice"), (2, None)]
    assert view["stuck"][0]["partition"] == "debug" and view["stuck"][0]["user"] is None


def test_private_usage_leaves_only_ones_own_license_checkouts():
    lic = {"features": [{"feature": "MATLAB", "users": {"alice": 1, "bob": 2}}]}
    assert policy.licenses_view(ALICE, frozenset({"usage"}), lic)["features"][0]["users"] == {
        "alice": 1
    }
    assert policy.licenses_view(ALICE, frozenset(), lic) == lic
    assert policy.licenses_view(ROOT, frozenset({"usage"}), lic) == lic


STATUS = {
    "nodes": [{"node": "node1"}],
    "slurm_nodes": [{"node": "node1"}],
    "node_metrics": {"node1": {}},
    "running_jobs": [{"job_id": 1, "user": "alice"}, {"job_id": 2, "user": "bob"}],
    "collection": [{"collector": "queue"}],
    "licenses": {"features": []},
    "jobs_total": 2,
}


def test_status_for_a_user_under_private_nodes_and_jobs():
    view = policy.status_view(ALICE, frozenset({"nodes", "jobs"}), STATUS)
    assert view["nodes"] == [] and view["slurm_nodes"] == [] and view["node_metrics"] == {}
    assert [j["job_id"] for j in view["running_jobs"]] == [1]
    assert view["collection"] == []  # the collectors' health is for admins
    assert set(view) == set(STATUS)  # the same JSON shape
    assert policy.status_view(ROOT, frozenset({"nodes", "jobs"}), STATUS) == STATUS


def test_status_keeps_the_agents_side_for_admins():
    agents = {
        "counters": {"agents_refused_bad_key": 3, "messages_rejected": 1},
        "agents_refused": {"total": 3, "last_peer": "tcp://10.0.0.9:40000"},
        "agents_on_plain": ["node7"],
    }
    view = policy.status_view(ALICE, frozenset(), {**STATUS, **agents})
    assert (view["counters"], view["agents_refused"], view["agents_on_plain"]) == ({}, {}, [])
    assert "10.0.0.9" not in repr(view) and "node7" not in repr(view)
    assert policy.status_view(ROOT, frozenset(), {**STATUS, **agents}) == {**STATUS, **agents}


JOB = {
    "job_id": 7,
    "user": "bob",
    "user_id": 2002,
    "queue_at_start": {
        "by_state": {"RUNNING": 2, "PENDING": 1},
        "by_partition_state": {"debug:RUNNING": 2, "debug:PENDING": 1},
        "by_user_state": {"alice:RUNNING": 1, "bob:RUNNING": 1, "bob:PENDING": 1},
        "cpus_by_state": {"RUNNING": 8, "PENDING": 1},
        "taken": 1700000000.0,
        "by_account_state": {"physics:RUNNING": 1},  # a later snapshot's: not known, so hidden
    },
}


@pytest.mark.parametrize("flags", [{"jobs"}, {"users"}, {"usage"}, {"accounts"}, {"jobs", "users"}])
def test_a_jobs_queue_at_start_names_no_other_user_under_private_data(flags):
    snap = policy.job_view(BOB, frozenset(flags), JOB)["queue_at_start"]
    assert snap["by_user_state"] == {"bob:RUNNING": 1, "bob:PENDING": 1}
    assert "alice" not in repr(snap) and "physics" not in repr(snap)
    assert snap["by_state"] == {"RUNNING": 2, "PENDING": 1}  # counts that name nobody stay
    assert snap["taken"] == 1700000000.0
    assert policy.job_view(ROOT, frozenset(flags), JOB) == JOB
    assert policy.job_view(BOB, frozenset(), JOB) == JOB  # PrivateData none: squeue shows all
    assert policy.job_view(NAMELESS, frozenset(flags), JOB)["queue_at_start"]["by_user_state"] == {}
    assert policy.job_view(BOB, frozenset(flags), {**JOB, "queue_at_start": None}) == {
        **JOB,
        "queue_at_start": None,
    }


def test_a_user_has_a_few_requests_at_once_admins_and_slurm_user_any_number():
    assert policy.requests_cap(ALICE, 64030) == policy.USER_REQUESTS
    assert policy.requests_cap(ROOT, 64030) is None
    assert policy.requests_cap(Caller(64030, "slurm"), 64030) is None  # a job array's starts
    assert policy.requests_cap(NAMELESS, None) == policy.USER_REQUESTS


def test_nodes_and_collectors_refused_as_slurm_would():
    policy.nodes_allowed(ALICE, frozenset({"jobs"}))
    with pytest.raises(Forbidden, match="PrivateData=nodes"):
        policy.nodes_allowed(ALICE, frozenset({"nodes"}))
    policy.nodes_allowed(ROOT, frozenset({"nodes"}))
    with pytest.raises(Forbidden):
        policy.collectors_allowed(ALICE)
    policy.collectors_allowed(ROOT)


@pytest.mark.parametrize("flag", ["nodes", "jobs", "users", "usage"])
def test_nfs_rates_are_for_admins_under_private_data_that_hides_what_users_do(flag):
    with pytest.raises(Forbidden, match=f"PrivateData={flag}") as refused:
        policy.nfs_allowed(ALICE, frozenset({flag, "events"}))
    assert "\n" not in str(refused.value)
    policy.nfs_allowed(ROOT, frozenset({flag}))


def test_nfs_rates_are_everyones_under_other_private_data():
    policy.nfs_allowed(ALICE, frozenset())
    policy.nfs_allowed(ALICE, frozenset({"partitions", "accounts", "events"}))


def test_json_bodies_are_objects_of_bounded_depth():
    assert api.parse_json(b'{"env": {"SLURM_JOB_ID": "1"}}') == {"env": {"SLURM_JOB_ID": "1"}}
    assert api.parse_json(b"") == {}
    deep = b'{"a": ' * (api.MAX_JSON_DEPTH + 1) + b"1" + b"}" * (api.MAX_JSON_DEPTH + 1)
    with pytest.raises(ValueError, match="nested deeper"):
        api.parse_json(deep)
    with pytest.raises(ValueError, match="nested deeper"):
        api.parse_json(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ValueError, match="JSON object"):
        api.parse_json(b"[1, 2]")


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("head.example.org", False),
    ],
)
def test_http_off_loopback_needs_tls(host, loopback):
    from nomade_common import config

    listen = f"[{host}]:27011" if ":" in host else f"{host}:27011"
    cfg = config.parse(f'[aggregator]\nhttp_listen = "{listen}"\n')
    assert api.is_loopback(api.split_listen(listen)[0]) is loopback
    if loopback:
        assert api.tls_files(cfg) is None
    else:
        with pytest.raises(
            RuntimeError, match="aggregator.http_listen .*security.tls_cert and security.tls_key"
        ):
            api.tls_files(cfg)
    cfg.security.tls_cert, cfg.security.tls_key = "/c.pem", "/k.pem"
    assert api.tls_files(cfg) == ("/c.pem", "/k.pem")


def test_private_data_auto_hides_everything_until_slurm_answers_then_follows_it():
    from nomade_common import config

    answers = [RuntimeError("slurmctld is down"), "PrivateData = nodes\n"]

    def read():
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    access = api.Access(config.Config(), reader=read)
    assert access.private() == policy.PRIVATE_FLAGS
    access._read_at = float("-inf")  # the next look is due
    assert access.private() == {"nodes"}


@pytest.mark.parametrize(
    "key, text",
    [("since", "abc"), ("since", "nan"), ("since", "-1"), ("limit", "1e3"), ("limit", "0")],
)
def test_a_jobs_query_number_that_is_wrong_is_named_in_one_line(key, text):
    kind, what, bounds = (
        (float, "Unix seconds", (0.0, 1e11))
        if key == "since"
        else (int, "a whole number", (1, 100_000))
    )
    with pytest.raises(ValueError, match=f"^{key} must be {what}") as err:
        api._number({key: text}, key, kind, what, bounds, None)
    assert text in str(err.value) and "\n" not in str(err.value)
