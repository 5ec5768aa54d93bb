"""MUNGE credentials for NØMADE's HTTP requests, against the real munged the dev cluster runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from conftest import SITE_PYTHON, required

from nomade_common import munge

VENV_PYTHON = SITE_PYTHON


@pytest.fixture(autouse=True)
def _munged():
    try:
        munge.verify(munge.sign("GET", "/probe", b""), "GET", "/probe", b"")
    except munge.MungeError as exc:
        required(f"munged is not answering ({exc})")


def test_a_credential_proves_the_callers_uid_for_that_request_only():
    header = munge.sign("POST", "/api/v1/check", b'{"request": {}}')
    ident = munge.verify(header, "POST", "/api/v1/check", b'{"request": {}}')
    assert (ident.uid, ident.gid) == (0, 0)
    assert abs(ident.encoded - time.time()) < 5


def test_a_credential_made_by_another_user_names_that_user():
    if not shutil.which("runuser") or not os.path.exists(VENV_PYTHON):
        required("runuser and /opt/nomade/venv (slurm-conf/install-nomade.sh) are needed")
    code = "from nomade_common import munge; print(munge.sign('GET', '/api/v1/jobs/7', b''))"
    out = subprocess.run(
        ["runuser", "-u", "alice", "--", VENV_PYTHON, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    ident = munge.verify(out.stdout.strip(), "GET", "/api/v1/jobs/7", b"")
    assert ident.uid == 2001  # alice, as cluster-up.sh makes her


def test_a_replayed_credential_is_refused():
    header = munge.sign("GET", "/api/v1/jobs/1", b"")
    munge.verify(header, "GET", "/api/v1/jobs/1", b"")
    with pytest.raises(munge.MungeError, match="replayed"):
        munge.verify(header, "GET", "/api/v1/jobs/1", b"")


@pytest.mark.parametrize(
    "method, target, body",
    [
        ("GET", "/api/v1/jobs/2", b"x"),
        ("POST", "/api/v1/jobs/1", b""),
        ("GET", "/api/v1/jobs/1?all=1", b""),
    ],
)
def test_a_credential_for_one_request_does_not_serve_another(method, target, body):
    header = munge.sign("GET", "/api/v1/jobs/1", b"")
    with pytest.raises(munge.MungeError, match="another request"):
        munge.verify(header, method, target, body)


def test_an_old_credential_is_refused_before_munged_expires_it():
    header = munge.sign("GET", "/api/v1/status", b"")
    with pytest.raises(munge.MungeError, match="ago"):
        munge.verify(header, "GET", "/api/v1/status", b"", max_age=60, now=time.time() + 120)


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer abc", "MUNGE", "MUNGE not-a-credential", "MUNGE MUNGE:" + "A" * 9000 + ":"],
)
def test_a_missing_or_malformed_credential_is_named_in_one_line(header):
    with pytest.raises(munge.MungeError) as err:
        munge.verify(header, "GET", "/api/v1/status", b"")
    assert "\n" not in str(err.value) and not err.value.unavailable


def test_a_forged_credential_is_refused():
    header = munge.sign("GET", "/api/v1/status", b"")
    forged = header[:-12] + ("A" if header[-12] != "A" else "B") + header[-11:]
    with pytest.raises(munge.MungeError):
        munge.verify(forged, "GET", "/api/v1/status", b"")


def test_munged_not_answering_is_told_apart_from_a_bad_credential(tmp_path):
    with pytest.raises(munge.MungeError) as err:
        munge.sign("GET", "/api/v1/status", b"", socket=str(tmp_path / "no-munged.socket"))
    assert err.value.unavailable and "munged is not answering" in str(err.value)


def test_a_credential_may_carry_the_body_itself_as_the_bash_hooks_make_it():
    body = b'{"env": {"SLURM_JOB_ID": "7"}, "kind": "prologslurmctld"}'
    made = subprocess.run(
        ["munge"],
        input="nomade-http-1 POST /api/v1/hooks/job-start body\n" + body.decode() + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    header = f"MUNGE {made.stdout.strip()}"
    assert munge.verify(header, "POST", "/api/v1/hooks/job-start", body).uid == 0
    other = subprocess.run(
        ["munge"],
        input="nomade-http-1 POST /api/v1/hooks/job-start body\n{}\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    with pytest.raises(munge.MungeError, match="another request"):
        munge.verify(f"MUNGE {other.stdout.strip()}", "POST", "/api/v1/hooks/job-start", body)
