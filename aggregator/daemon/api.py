"""The aggregator's HTTP API: Starlette routes behind MUNGE authentication, served by uvicorn in
a thread of nomade-aggregator (docs/api.md).

Every endpoint but /api/v1/health needs `Authorization: MUNGE <credential>`, a credential bound
to the request's method, path and query and the SHA-256 of its body (nomade_common/munge.py).
The middleware has munged decode the credential (off the event loop) as soon as the headers are
in, so that a request without one is refused before its body is read; it then reads the body (at
most MAX_BODY_BYTES, within BODY_SECONDS), checks what the credential was made for, and hands the
app the caller (uid, name, admin) with the body replayed.  What each caller may see is
aggregator/views/policy.py.
"""

from __future__ import annotations

import asyncio
import functools
import grp
import logging
import os
import pwd
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import h11
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from aggregator import store
from aggregator.alerts import actions
from aggregator.jobs.reconcile import run_command
from aggregator.views import alertviews, clusterviews, nfsrates, policy, query, trendviews
from aggregator.views.policy import Caller, Forbidden
from nomade_common import jsonin, munge
from nomade_common.config import Config, is_loopback
from nomade_common.text import printable

log = logging.getLogger("nomade.api")
HEALTH = "/api/v1/health"
MAX_BODY_BYTES = 1 << 20  # a larger body is answered 413
MAX_JSON_DEPTH = 32  # nesting of a request's JSON
HEADER_SECONDS = 10.0  # a connection that has not sent its request's headers by then is closed
BODY_SECONDS = 10.0  # nor its whole body, from then on
LINGER_SECONDS = 2.0  # a connection answered before its body was in is closed this long after
REFUSALS_LOG_SECONDS = 60.0  # one log line per reason of refusal in this time
KEEPALIVE_SECONDS = 5
MAX_JOB_ID = (1 << 63) - 1  # a job id past SQLite's integers is no job (404, not a traceback)
COMMIT_SHARE = 0.4  # of hooks.timeout_seconds: how long a hook report may wait for its COMMIT
CONCURRENCY = 512  # connections and requests in progress; beyond it uvicorn answers 503
BACKLOG = 256  # a job array starts dozens of PrologSlurmctld at once
PRIVATE_DATA_SECONDS = 300.0  # how often Slurm's PrivateData is read again
CALLER_KEY = "nomade.caller"
CALLER_SECONDS = 60.0  # a caller's name, groups and admin rights are looked up again after this


def error(status: int, text: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(text).split())}, status_code=status)


# -- who is asking ------------------------------------------------------------------------------
class Access:
    """The callers' identities (from the credential's uid) and Slurm's PrivateData flags."""

    def __init__(self, cfg: Config, reader: Callable[[], str] | None = None) -> None:
        self.sec = cfg.security
        self.scontrol = cfg.aggregator.scontrol
        self.slurm_uid = self.sec.slurm_uid()
        self._read = reader or self._scontrol_config
        self._private: frozenset[str] | None = None
        self._read_at = float("-inf")
        self._lock = threading.Lock()
        self._callers: dict[tuple[int, int], tuple[Caller, float]] = {}

    def caller(self, ident: munge.Identity) -> Caller:
        """Who IDENT is: name, groups, admin.  Kept CALLER_SECONDS per uid and gid, so that a
        burst of requests does not ask the site's directory (LDAP, SSSD) for each."""
        key, now = (ident.uid, ident.gid), time.monotonic()
        kept = self._callers.get(key)
        if kept is not None and now - kept[1] < CALLER_SECONDS:
            return kept[0]
        if len(self._callers) > 10_000:
            self._callers.clear()
        found = self._look_up(ident)
        self._callers[key] = (found, now)
        return found

    def _look_up(self, ident: munge.Identity) -> Caller:
        try:
            name: str | None = pwd.getpwuid(ident.uid).pw_name
        except KeyError:
            name = None
        groups = frozenset(_group_names(name, ident.gid)) if name else frozenset()
        admin = policy.is_admin(
            ident.uid, name, groups, self.sec.admin_users, self.sec.admin_groups
        )
        return Caller(ident.uid, name, admin, groups)

    def private(self) -> frozenset[str]:
        """The PrivateData flags in force: the setting, or Slurm's (read now and then).  Until
        Slurm has answered once, every flag is set: what cannot be checked stays hidden."""
        if self.sec.private_data != "auto":
            return policy.parse_private_data(self.sec.private_data)
        if time.monotonic() - self._read_at > PRIVATE_DATA_SECONDS and self._lock.acquire(
            blocking=False
        ):
            try:
                self._refresh()
            finally:
                self._lock.release()
        return policy.PRIVATE_FLAGS if self._private is None else self._private

    def _refresh(self) -> None:
        self._read_at = time.monotonic()
        try:
            found = policy.private_data_from_config(self._read())
        except (OSError, RuntimeError) as exc:
            log.warning(
                "cannot read Slurm's PrivateData (%s); %s",
                exc,
                "keeping the last value"
                if self._private is not None
                else "hiding what it could hide",
            )
            return
        self._private = found if found is not None else frozenset()

    def _scontrol_config(self) -> str:
        return run_command([self.scontrol, "show", "config"], 10.0)


def _group_names(name: str, gid: int) -> list[str]:
    out = []
    for g in os.getgrouplist(name, gid):
        try:
            out.append(grp.getgrgid(g).gr_name)
        except KeyError:
            pass
    return out


# -- authentication -----------------------------------------------------------------------------
class MungeAuth:
    """ASGI middleware, in this order: the credential is decoded as soon as the headers are in
    (none or a bad one: 401 at once, before any body is read; 503 while munged does not answer);
    a user with USER_REQUESTS requests in progress gets 429; the body is read, whole, within
    BODY_SECONDS; the credential must name exactly this method, target and body (401).  The
    rest reach the app with scope[CALLER_KEY] set and their body replayed."""

    def __init__(
        self,
        app: ASGIApp,
        access: Access,
        refusals: RefusalLog,
        socket: str = "",
        max_age: float = 60.0,
    ) -> None:
        self.app, self.access, self.refusals = app, access, refusals
        self.socket, self.max_age = socket, max_age
        self.busy: dict[int, int] = {}  # uid: requests in progress (touched on the loop only)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == HEALTH:
            return await self.app(scope, receive, send)
        header = _header(scope, b"authorization")
        try:
            caller, cred = await run_in_threadpool(self._decode, header)
        except munge.MungeError as exc:
            return await self._refuse(scope, receive, send, exc)
        cap = policy.requests_cap(caller, self.access.slurm_uid)
        if cap is not None and self.busy.get(caller.uid, 0) >= cap:
            busy = _Refused(
                429,
                f"uid {caller.uid} has {cap} requests in progress already; "
                "try again once one is answered",
            )
            return await self._refuse(scope, receive, send, busy)
        self.busy[caller.uid] = self.busy.get(caller.uid, 0) + 1
        try:
            await self._bound(scope, receive, send, caller, cred)
        finally:
            self.busy[caller.uid] -= 1
            if not self.busy[caller.uid]:
                del self.busy[caller.uid]

    def _decode(self, header: str | None) -> tuple[Caller, tuple[munge.Identity, bytes]]:
        cred = munge.decode_header(header, self.socket)
        return self.access.caller(cred[0]), cred

    async def _bound(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        caller: Caller,
        cred: tuple[munge.Identity, bytes],
    ) -> None:
        """The request, once its body is in and the credential names it, to the app."""
        try:
            body = await _read_body(scope, receive)
            munge.check_binding(*cred, scope["method"], _target(scope), body, max_age=self.max_age)
        except (_Refused, munge.MungeError) as exc:
            return await self._refuse(scope, receive, send, exc)
        scope[CALLER_KEY] = caller
        await self.app(scope, _replay(body, receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
        if isinstance(exc, munge.MungeError) and exc.unavailable:
            answer = error(503, f"munged is not answering on the head node: {exc}")
        else:
            status = exc.status if isinstance(exc, _Refused) else 401
            self.refusals.note(status, str(exc), scope["method"], _target(scope))
            answer = error(status, str(exc))
        await answer(scope, receive, send)


class RefusalLog:
    """One log line per reason of refusal a minute, the next one saying how many were left out,
    so that a flood of refused requests does not flood the log."""

    def __init__(self, every: float | None = None) -> None:
        self.every = REFUSALS_LOG_SECONDS if every is None else every
        self._seen: dict[str, tuple[float, int]] = {}  # reason: (last logged, left out since)

    def note(self, status: int, text: str, method: str, target: str) -> None:
        reason, now = f"{status} {_reason(text)}", time.monotonic()
        last, left_out = self._seen.get(reason, (float("-inf"), 0))
        if now - last < self.every:
            self._seen[reason] = (last, left_out + 1)
            return
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[reason] = (now, 0)
        more = f" ({left_out} more refused for this reason in the last minute)" if left_out else ""
        log.info("http: %s %s refused: %s%s", method, _clean(target), text, more)


def _reason(text: str) -> str:
    """The kind of a refusal, without what varies between requests (numbers, the target)."""
    return re.sub(r"\d+", "N", text.split(", not ")[0].split(":")[0])


def _clean(text: str) -> str:
    """A request target fit for one log line (it is the client's)."""
    return printable(text, 200, "?")


class _Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    """The whole body, within MAX_BODY_BYTES and BODY_SECONDS for all of it."""
    length = _header(scope, b"content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        raise _Refused(413, f"request body over {MAX_BODY_BYTES} bytes")
    chunks, size, more = [], 0, True
    try:
        async with asyncio.timeout(BODY_SECONDS):
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Refused(400, "the client went away")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise _Refused(413, f"request body over {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
                more = message.get("more_body", False)
    except TimeoutError:
        raise _Refused(408, f"request body not received within {BODY_SECONDS:g} s") from None
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # a disconnect, once the response is under way

    return again


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _target(scope: Scope) -> str:
    """The request target as the client sent (and signed) it: raw path and query string."""
    path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string") or b""
    return (path + (b"?" + query if query else b"")).decode("latin-1")


# -- the endpoints ------------------------------------------------------------------------------
def parse_json(body: bytes) -> dict[str, Any]:
    """A request body: a JSON object nested at most MAX_JSON_DEPTH deep (ValueError if not)."""
    obj = jsonin.loads(body or b"{}", MAX_JSON_DEPTH)
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    return obj


def _answer(fn: Callable[..., Any]) -> Callable[[Request], Any]:
    """An endpoint: FN(request, caller) run in the thread pool (it reads SQLite or scores), its
    refusals and failures turned into one-line JSON errors."""

    @functools.wraps(fn)
    async def endpoint(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            out = await run_in_threadpool(fn, request, request.scope[CALLER_KEY], body)
        except Forbidden as exc:
            return error(403, str(exc))
        except ValueError as exc:
            return error(400, str(exc))
        except Exception as exc:
            log.exception("http: %s %s failed", request.method, request.url.path)
            return error(500, type(exc).__name__)
        try:  # an answer JSON cannot carry (NaN, a value of no JSON type) is the view's fault
            return out if isinstance(out, JSONResponse) else JSONResponse(out)
        except Exception as exc:
            log.exception("http: %s %s: the answer is no JSON", request.method, request.url.path)
            return error(500, f"{type(exc).__name__}: the answer could not be made JSON")

    return endpoint


class Api:
    """The routes, over an Aggregator (its reader, hooks and scorer) and an Access."""

    def __init__(self, agg: Any, access: Access, refusals: RefusalLog) -> None:
        self.agg, self.access, self.refusals = agg, access, refusals

    def routes(self) -> list[Route]:
        v1 = "/api/v1"
        return [
            Route(HEALTH, self.health),
            Route(f"{v1}/hooks/job-start", self.job_start, methods=["POST"]),
            Route(f"{v1}/hooks/job-end", self.job_end, methods=["POST"]),
            Route(f"{v1}/check", _answer(self.check), methods=["POST"]),
            Route(f"{v1}/status", _answer(self.status)),
            Route(f"{v1}/queue", _answer(self.queue)),
            Route(f"{v1}/nodes", _answer(self.nodes)),
            Route(f"{v1}/licenses", _answer(self.licenses)),
            Route(f"{v1}/partitions", _answer(self.partitions)),
            Route(f"{v1}/fairshare", _answer(self.fairshare)),
            Route(f"{v1}/quotas", _answer(self.quotas)),
            Route(f"{v1}/scratch", _answer(self.scratch)),
            Route(f"{v1}/nfs", _answer(self.nfs)),
            Route(f"{v1}/disk", _answer(self.disk)),
            Route(f"{v1}/trend", _answer(self.trend)),
            Route(f"{v1}/collectors", _answer(self.collectors)),
            Route(f"{v1}/aggregator", _answer(self.aggregator)),
            Route(f"{v1}/models", _answer(self.models)),
            Route(f"{v1}/jobs", _answer(self.jobs)),
            Route(f"{v1}/alerts", _answer(self.alerts)),
            Route(v1 + "/alerts/{alert_id:int}/ack", _answer(self.alert_ack), methods=["POST"]),
            Route(f"{v1}/alerts/silences", _answer(self.silences), methods=["GET", "POST"]),
            Route(v1 + "/jobs/{job_id:int}", _answer(self.job)),
        ]

    async def health(self, request: Request) -> JSONResponse:
        """For monitors, unauthenticated, so it says no more than whether the store is taking
        writes: 503 while it fails (the details are in the signed /aggregator and status)."""
        if self.agg.writer.health()["ok"]:
            return JSONResponse({"ok": True})
        return error(503, "store failing")

    def aggregator(self, request: Request, caller: Caller, body: bytes) -> dict[str, Any]:
        return self.agg.runtime()

    # Hook reports: answered once the report as received is committed (an urgent writer item,
    # so a backlog of samples does not delay it), before the rest of their work begins (a
    # background task runs after the answer is sent), since slurmctld waits for the answer.
    # A store that cannot commit within COMMIT_SHARE of the hook's limit gets 503: the hook
    # keeps the report and sends it again.
    async def job_start(self, request: Request) -> JSONResponse:
        return await self._report(request, "job-start")

    async def job_end(self, request: Request) -> JSONResponse:
        return await self._report(request, "job-end")

    async def _report(self, request: Request, kind: str) -> JSONResponse:
        caller = request.scope[CALLER_KEY]
        if not policy.may_report(caller, self.access.slurm_uid):
            text = f"job reports are accepted from root and {self.access.sec.slurm_user} only"
            self.refusals.note(403, text, request.method, f"{request.url.path} (uid {caller.uid})")
            return error(403, text)
        try:
            received, after = self.agg.receive_report(kind, parse_json(await request.body()))
        except ValueError as exc:
            log.warning("hook report on %s rejected: %s", request.url.path, exc)
            return error(400, str(exc))
        except Exception as exc:
            log.exception("hook report on %s failed", request.url.path)
            return error(500, type(exc).__name__)
        wait = self.agg.cfg.hooks.timeout_seconds * COMMIT_SHARE
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(received.future)), wait)
        except TimeoutError:
            received.cancel()
            health = self.agg.writer.health()
            why = f"store failing: {health['reason']}" if not health["ok"] else "store busy"
            log.warning(
                "hook report on %s answered 503: not stored within %.2f s (%s)",
                request.url.path,
                wait,
                why,
            )
            return error(503, f"report not stored within {wait:.2f} s ({why}); send it again")
        except Exception as exc:  # the report itself could not be stored (not the store's fault)
            log.warning("hook report on %s not stored: %s", request.url.path, exc)
            return error(400, f"report not storable: {exc}")
        return JSONResponse({"ok": True}, background=BackgroundTask(after))

    def check(self, request: Request, caller: Caller, body: bytes) -> dict[str, Any]:
        req = parse_json(body)
        job = req.get("request")
        if not isinstance(job, dict):
            raise ValueError('expected {"request": {...}}')
        job["user"] = policy.check_user(caller, job.get("user"))
        return self.agg.check(req)

    def status(self, request: Request, caller: Caller, body: bytes) -> dict[str, Any]:
        conn = self.agg.reader()
        view = {
            **query.status(conn),
            **clusterviews.overview(conn),
            "aggregator": self.agg.runtime(),
        }
        return policy.status_view(caller, self._private(caller), view)

    def queue(self, request: Request, caller: Caller, body: bytes) -> dict[str, Any]:
        view = clusterviews.queue(self.agg.reader())
        return policy.queue_view(caller, self._private(caller), view)

    def nodes(self, request: Request, caller: Caller, body: bytes) -> dict[str, Any]:
        policy.nodes_allowed(caller, self._private(caller))
        hours = _number(request.query_params, "hours", float, "a number", (0.01, 24 * 31), None)
        view = clusterviews.nodes(self.agg.reader(), hours=hours or clusterviews.ERRORS_HOURS)
        return policy.nodes_view(caller, view)

    # What the nodes and Slurm read beyond jobs (docs/api.md): quotas and scratch per user,
    # fair share and partitions as Slurm's PrivateData allows, NFS rates per node and mount.
    def partitions(self, request: Request, caller: Caller, body: bytes) -> dict[str, Any]:
        private = self._private(caller)
        policy.partitions_allowed(caller, private)
        return policy.partitions_view(caller, private, clusterviews.partitions(self.agg.reader()))

    def fairshare(self, request: Request, caller: Caller, body: bytes) -> dict[str, Any]:
        view = clusterviews.fairshare(self.agg.reader())
        return policy.fairshare_view(caller, self._private(caller), view)

    def quotas(self, request: Request, caller: Caller, body: bytes) -> dict[str, Any]:
        user, listed = policy.listing_user(caller, request.query_params.get("user"))
        if not listed:
            return {"quotas": []}
        # A user's own quotas are their user quota and their groups' (policy.own_quota), so a
        # user's view starts from every quota, not from their user quotas only.
        view = clusterviews.quotas(self.agg.reader(), user if caller.admin else None)
        return policy.quotas_view(caller, view)

    def scratch(self, request: Request, caller: Caller, body: bytes) -> dict[str, Any]:
        user, listed = policy.listing_user(caller, request.query_params.get("user"))
        view = clusterviews.scratch(self.agg.reader(), user)
        if not listed:
            view = {**view, **{k: [] for k in policy.SCRATCH_PER_USER}}
        return policy.scratch_view(caller, view)

    def nfs(self, request: Request, caller: Caller, body: bytes) -> dict[str, Any]:
        policy.nfs_allowed(caller, self._private(caller))
        q = request.query_params
        hours = _number(q, "hours", float, "a number", (0.01, nfsrates.MAX_HOURS), nfsrates.HOURS)
        node = q.get("node") or None
        if node is not None and len(node) > 255:
            raise ValueError("node must be a node name of at most 255 characters")
        return nfsrates.nfs(self.agg.reader(), hours=hours, node=node)

    # Trends of the readings history (docs/trends.md): one filesystem, or any numeric field.
    def disk(self, request: Request, caller: Caller, body: bytes) -> dict[str, Any]:
        q = request.query_params
        fs_path = trendviews.check_path(q.get("path"))
        hours = _trend_hours(q)
        node, private = _trend_node(q), self._private(caller)
        policy.disk_trend_allowed(caller, private, node)
        view = trendviews.disk(self.agg.reader(), fs_path, hours=hours, node=node)
        return policy.disk_trend_view(caller, private, view)

    def trend(self, request: Request, caller: Caller, body: bytes) -> dict[str, Any]:
        q = request.query_params
        collector = trendviews.check_name("collector", q.get("collector"))
        record = trendviews.check_name("record", q.get("record"))
        key = trendviews.check_name("key", q.get("key"))
        hours, node = _trend_hours(q), _trend_node(q)
        limit = _number(q, "limit", float, "a number", (-1e300, 1e300), None)
        policy.trend_allowed(caller, self._private(caller), collector, record)
        return trendviews.trend(self.agg.reader(), collector, record, key, node, hours, limit)

    def licenses(self, request: Request, caller: Caller, body: bytes) -> dict[str, Any]:
        view = clusterviews.licenses(self.agg.reader())
        return policy.licenses_view(caller, self._private(caller), view)

    def collectors(self, request: Request, caller: Caller, body: bytes) -> Any:
        policy.collectors_allowed(caller)
        return clusterviews.collection(self.agg.reader())

    def models(self, request: Request, caller: Caller, body: bytes) -> Any:
        return policy.models_view(caller, store.list_models(self.agg.reader()))

    def jobs(self, request: Request, caller: Caller, body: bytes) -> Any:
        q = request.query_params
        user, listed = policy.jobs_user(caller, q.get("user"))
        since = _number(q, "since", float, "Unix seconds", (0.0, 1e11), None)
        limit = _number(q, "limit", int, "a whole number", (1, 100_000), 100)
        below = _number(q, "efficiency_below", float, "a percentage", (0.0, 1000.0), None)
        if not listed:
            return []
        return query.jobs(
            self.agg.reader(), user, q.get("state"), since, limit, efficiency_below=below
        )

    def alerts(self, request: Request, caller: Caller, body: bytes) -> Any:
        """Alerts newest first: a user's are those about their own jobs (policy.jobs_user)."""
        q = request.query_params
        user, listed = policy.jobs_user(caller, None)
        since = _number(q, "since", float, "Unix seconds", (0.0, 1e11), None)
        limit = _number(q, "limit", int, "a whole number", (1, 100_000), 100)
        unresolved = q.get("unresolved") not in (None, "", "0")
        if not listed:
            return []
        return alertviews.alerts(self.agg.reader(), unresolved, since, user, limit)

    # An administrator's alert actions (aggregator/alerts/actions.py), written by the writer
    # under the caller's name: the same as root's `nomadectl alerts ack|silence` on the store.
    def alert_ack(self, request: Request, caller: Caller, body: bytes) -> Any:
        by = (caller.uid, policy.alert_admin(caller, "acknowledging an alert"))
        alert_id, now = request.path_params["alert_id"], time.time()
        if not 0 < alert_id < 2**63:
            return error(404, f"no alert {alert_id}")
        if not self.agg.writer.call(lambda c: actions.ack(c, alert_id, by, now)):
            return error(404, f"no alert {alert_id}")
        return {"id": alert_id, "acked_by": by[1], "acked_t": now}

    def silences(self, request: Request, caller: Caller, body: bytes) -> Any:
        if request.method == "GET":
            policy.alert_admin(caller, "the list of silences")
            return alertviews.silences(self.agg.reader())
        by = (caller.uid, policy.alert_admin(caller, "silencing alerts"))
        now = time.time()
        s = actions.silence_request(parse_json(body), now)
        sid = self.agg.writer.call(
            lambda c: actions.silence(
                c, s["rule"], s["subject"], s["start"], s["until"], s["reason"], by, now
            )
        )
        return {"id": sid, **s, "created_by": by[1]}

    def job(self, request: Request, caller: Caller, body: bytes) -> Any:
        job_id = request.path_params["job_id"]
        found = query.job(self.agg.reader(), job_id) if 0 <= job_id <= MAX_JOB_ID else None
        if found is None or not policy.job_visible(caller, found):
            return error(404, "no such job")  # another user's job is not disclosed either
        return policy.job_view(caller, self._private(caller), found)

    def _private(self, caller: Caller) -> frozenset[str]:
        return frozenset() if caller.admin else self.access.private()


def _trend_hours(query: Any) -> float:
    return _number(
        query, "hours", float, "a number", (0.01, trendviews.MAX_HOURS), trendviews.HOURS
    )


def _trend_node(query: Any) -> str | None:
    node = query.get("node") or None
    if node is not None and len(node) > 255:
        raise ValueError("node must be a node name of at most 255 characters")
    return node


def _number(
    query: Any, key: str, kind: type, what: str, bounds: tuple[float, float], default: Any
) -> Any:
    """Query parameter KEY as KIND within BOUNDS, DEFAULT where absent; else one clear
    ValueError (400) naming the parameter."""
    low, high = bounds
    text = query.get(key)
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:  # NaN compares false: refused too
        raise ValueError(f"{key} must be {what} between {low:g} and {high:g}, not {text[:40]!r}")
    return value


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error(404, f"no such endpoint {_clean(request.url.path)}")
    return error(exc.status_code, exc.detail)


async def _failed(request: Request, exc: Exception) -> JSONResponse:
    """Whatever else went wrong (Starlette logs the traceback): one JSON line, not plain text."""
    return error(500, type(exc).__name__)


def make_app(agg: Any, access: Access, socket: str = "", max_age: float = 60.0) -> Starlette:
    # The body limit is the middleware's, which reads every body to check its digest (Starlette's
    # max_body_size would answer in plain text, over any JSON answer).
    refusals = RefusalLog()
    app = Starlette(
        routes=Api(agg, access, refusals).routes(),
        exception_handlers={HTTPException: _http_error, Exception: _failed},
    )
    app.router.redirect_slashes = False  # "/api/v1/status/" is 404, not a redirect
    app.add_middleware(MungeAuth, access=access, refusals=refusals, socket=socket, max_age=max_age)
    return app


# -- serving ------------------------------------------------------------------------------------
class _Protocol(H11Protocol):
    """uvicorn's HTTP/1.1, with a deadline for a request's headers (uvicorn has none), and a
    connection answered before its body was in (refused) closed LINGER_SECONDS later: uvicorn
    would keep reading, and discarding, a body trickled on for ever.  Not at once, so that a
    client still sending a body it had written whole reads the answer rather than a reset."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = self.loop.call_later(HEADER_SECONDS, self._headers_late)

    def _headers_late(self) -> None:
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()  # which may start the next request's cycle
        body_due = self.cycle is cycle and self.conn.their_state is h11.SEND_BODY
        if body_due and not self.transport.is_closing():
            self.loop.call_later(LINGER_SECONDS, self._body_late, cycle)

    def _body_late(self, cycle: Any) -> None:
        if self.cycle is cycle and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        super().connection_lost(exc)


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def tls_files(cfg: Config) -> tuple[str, str] | None:
    """(cert, key) to serve with, or None on loopback without them; RuntimeError, one line, for
    plain HTTP that would leave this host."""
    sec, listen = cfg.security, cfg.aggregator.http_listen
    if sec.tls_cert and sec.tls_key:
        return sec.tls_cert, sec.tls_key
    if is_loopback(split_listen(listen)[0]):
        return None
    raise RuntimeError(
        f"aggregator.http_listen {listen} leaves loopback: set security.tls_cert and "
        "security.tls_key (HTTP off this host is served only with TLS)"
    )


def _listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """uvicorn in a thread (no signal handlers: the daemon owns those), on a socket bound here,
    so that a port in use or a bad certificate fails start-up, not a thread."""

    def __init__(self, agg: Any) -> None:
        cfg = agg.cfg
        tls = tls_files(cfg)
        sec = cfg.security
        app = make_app(agg, Access(cfg), sec.munge_socket, sec.credential_max_age_seconds)
        config = uvicorn.Config(
            app,
            loop="asyncio",
            http=_Protocol,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            limit_concurrency=CONCURRENCY,
            backlog=BACKLOG,
            timeout_keep_alive=KEEPALIVE_SECONDS,
            timeout_graceful_shutdown=2,
            h11_max_incomplete_event_size=16 << 10,
            ssl_certfile=tls[0] if tls else None,
            ssl_keyfile=tls[1] if tls else None,
        )
        try:
            config.load()
        except (OSError, ssl.SSLError) as exc:
            raise RuntimeError(
                f"security.tls_cert / security.tls_key: cannot load ({exc})"
            ) from None
        self.scheme = "https" if tls else "http"
        self.sock = _listen(*split_listen(cfg.aggregator.http_listen))
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)

    def start(self) -> None:
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="http", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(5.0)
        self.sock.close()


def munged_answers(socket_path: str) -> str | None:
    """None when munged makes credentials, else why not (logged at start, not fatal)."""
    try:
        munge.encode(b"", socket_path)
    except munge.MungeError as exc:
        return str(exc)
    return None
