"""A client of the aggregator's HTTP API (aggregator/daemon/api.py): each request signed with a
MUNGE credential for exactly its method, target and body; https verified against
`security.tls_ca` or the system's trust store.  Every failure is one ApiError line for the
caller to print.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from nomade_common import munge
from nomade_common.config import Config


class ApiError(Exception):
    """A request the aggregator refused or could not be asked; one line.  STATUS: the HTTP
    status of a refusal (None when there was no answer)."""

    def __init__(self, text: str, status: int | None = None) -> None:
        super().__init__(" ".join(text.split()))
        self.status = status


def target(path: str, params: dict[str, Any] | None = None) -> str:
    """PATH with its query string, the parameters that are not None, in the order given."""
    query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
    return f"{path}?{query}" if query else path


def call(
    url: str,
    method: str,
    where: str,
    body: bytes = b"",
    *,
    ca: str = "",
    munge_socket: str = "",
    timeout: float = 10.0,
) -> Any:
    """METHOD URL+WHERE (a path with its query string) with a MUNGE credential; the JSON answer."""
    base = url.rstrip("/")
    try:
        auth = munge.sign(method, where, body, munge_socket)
    except munge.MungeError as exc:
        raise ApiError(f"cannot make a MUNGE credential on this host: {exc}") from None
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    req = urllib.request.Request(
        base + where, data=body if method != "GET" else None, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=_tls(base, ca)) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise ApiError(
            f"the aggregator refused: {_reason(exc)} (HTTP {exc.code})", exc.code
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", None) or exc
        raise ApiError(f"cannot reach the aggregator at {base}: {why}") from None
    except ValueError:
        raise ApiError(f"the aggregator at {base} did not answer JSON") from None


def get(cfg: Config, path: str, params: dict[str, Any] | None = None) -> Any:
    """A signed GET of PATH at `hooks.aggregator_url`, with the configuration's TLS and MUNGE."""
    return call(
        cfg.hooks.aggregator_url,
        "GET",
        target(path, params),
        ca=cfg.security.tls_ca,
        munge_socket=cfg.security.munge_socket,
    )


def post(cfg: Config, path: str, obj: dict[str, Any]) -> Any:
    """A signed POST of OBJ (as JSON) to PATH at `hooks.aggregator_url`."""
    return call(
        cfg.hooks.aggregator_url,
        "POST",
        path,
        json.dumps(obj).encode(),
        ca=cfg.security.tls_ca,
        munge_socket=cfg.security.munge_socket,
    )


def _tls(url: str, ca: str) -> ssl.SSLContext | None:
    if not url.startswith("https://"):
        return None
    try:
        return ssl.create_default_context(cafile=ca or None)
    except (OSError, ssl.SSLError) as exc:
        raise ApiError(f"security.tls_ca {ca}: cannot load ({exc})") from None


def _reason(exc: urllib.error.HTTPError) -> str:
    try:
        answer = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        return str(exc.reason)
    return str(answer.get("error") or exc.reason) if isinstance(answer, dict) else str(exc.reason)
