"""MUNGE credentials for NØMADE's HTTP requests, through libmunge (the library behind `munge` and
`unmunge`, installed with every Slurm cluster's munged).

A request is signed by encoding, as the credential's payload, what the request is:

    nomade-http-1 METHOD PATH?QUERY SHA256(BODY)

so a credential taken from one request cannot be used for another path, method or body.  A
client that cannot hash without starting a process (the head-node hooks, in bash) carries the
body itself instead of its digest:

    nomade-http-1 METHOD PATH?QUERY body
    BODY
    (a closing newline)

munged
refuses a credential decoded twice (its replay cache) or older than its TTL; NØMADE also refuses
one encoded longer ago than `security.credential_max_age_seconds`.

The client sends it as `Authorization: MUNGE <credential>`; `verify` returns the uid and gid that
munged vouches for, or raises MungeError with one line that says why not.  It is two steps, which
a server may take apart: `decode_header` (munged's word on the credential, before the body is
read) and `check_binding` (the payload names this request, once its body is in).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import threading
import time
from dataclasses import dataclass

SCHEME = "MUNGE"
PAYLOAD_PREFIX = "nomade-http-1"

_OPT_ENCODE_TIME = 6  # munge_opt_t
_OPT_SOCKET = 8
_ERR_SOCKET = 6  # munge_err_t: cannot talk to munged
_ERR_EXPIRED, _ERR_REWOUND, _ERR_REPLAYED = 15, 16, 17

_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None)
_lock = threading.Lock()


class MungeError(Exception):
    """A credential that cannot be made or is not accepted; `unavailable` when munged is down."""

    def __init__(self, reason: str, *, unavailable: bool = False) -> None:
        super().__init__(reason)
        self.unavailable = unavailable


@dataclass(frozen=True, slots=True)
class Identity:
    uid: int
    gid: int
    encoded: float  # when the credential was made (munged's clock)


def _library() -> ctypes.CDLL:
    global _lib
    with _lock:
        if _lib is None:
            name = ctypes.util.find_library("munge") or "libmunge.so.2"
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                raise MungeError(
                    "libmunge is not installed (Debian: apt install libmunge2 munge)",
                    unavailable=True,
                ) from None
            lib.munge_ctx_create.restype = ctypes.c_void_p
            lib.munge_ctx_destroy.argtypes = [ctypes.c_void_p]
            lib.munge_ctx_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
            lib.munge_ctx_get.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
            lib.munge_encode.argtypes = [
                ctypes.POINTER(ctypes.c_void_p),
                ctypes.c_void_p,
                ctypes.c_char_p,
                ctypes.c_int,
            ]
            lib.munge_decode.argtypes = [
                ctypes.c_char_p,
                ctypes.c_void_p,
                ctypes.POINTER(ctypes.c_void_p),
                ctypes.POINTER(ctypes.c_int),
                ctypes.POINTER(ctypes.c_uint32),
                ctypes.POINTER(ctypes.c_uint32),
            ]
            lib.munge_strerror.restype = ctypes.c_char_p
            _libc.free.argtypes = [ctypes.c_void_p]
            _lib = lib
        return _lib


def payload(method: str, target: str, body: bytes) -> bytes:
    """What a credential for this request carries (TARGET: the path with its query string)."""
    return f"{PAYLOAD_PREFIX} {method.upper()} {target} {hashlib.sha256(body).hexdigest()}".encode()


def inline_payload(method: str, target: str, body: bytes) -> bytes:
    """The same binding with the body itself in place of its digest, and a closing newline
    (bash's here-string adds it: the hooks hand munge its payload on stdin, never in its
    command line, which any user on the host could read in /proc)."""
    return f"{PAYLOAD_PREFIX} {method.upper()} {target} body\n".encode() + body + b"\n"


def _context(lib: ctypes.CDLL, socket: str) -> int:
    ctx = lib.munge_ctx_create()
    if not ctx:
        raise MungeError("libmunge could not make a context (out of memory)")
    if socket:
        lib.munge_ctx_set(ctx, _OPT_SOCKET, socket.encode())
    return ctx


def _why(lib: ctypes.CDLL, err: int) -> MungeError:
    text = (lib.munge_strerror(err) or b"unknown error").decode(errors="replace")
    if err == _ERR_SOCKET:
        return MungeError(f"munged is not answering ({text})", unavailable=True)
    reasons = {
        _ERR_EXPIRED: "expired",
        _ERR_REWOUND: "from the future (clock skew)",
        _ERR_REPLAYED: "replayed (a credential is good for one request)",
    }
    return MungeError(f"MUNGE credential {reasons.get(err, 'refused')}: {text}")


def encode(data: bytes, socket: str = "") -> str:
    """A credential carrying DATA for the calling process's uid and gid."""
    lib = _library()
    ctx = _context(lib, socket)
    cred = ctypes.c_void_p()
    try:
        err = lib.munge_encode(ctypes.byref(cred), ctx, data, len(data))
        if err:
            raise _why(lib, err)
        return ctypes.string_at(cred).decode("ascii")
    finally:
        if cred.value:
            _libc.free(cred)
        lib.munge_ctx_destroy(ctx)


def decode(cred: str, socket: str = "") -> tuple[Identity, bytes]:
    """The identity munged vouches for and the payload, or MungeError."""
    lib = _library()
    raw = cred.strip().encode("ascii", errors="replace")
    if not raw.startswith(b"MUNGE:") or len(raw) > 8192:
        raise MungeError("not a MUNGE credential (expected MUNGE:...:)")
    ctx = _context(lib, socket)
    buf, length = ctypes.c_void_p(), ctypes.c_int()
    uid, gid = ctypes.c_uint32(), ctypes.c_uint32()
    try:
        err = lib.munge_decode(
            raw, ctx, ctypes.byref(buf), ctypes.byref(length), ctypes.byref(uid), ctypes.byref(gid)
        )
        if err:
            raise _why(lib, err)
        encoded = ctypes.c_long()
        lib.munge_ctx_get(ctx, _OPT_ENCODE_TIME, ctypes.byref(encoded))
        data = ctypes.string_at(buf, length.value) if buf.value else b""
        return Identity(uid.value, gid.value, float(encoded.value)), data
    finally:
        if buf.value:
            _libc.free(buf)
        lib.munge_ctx_destroy(ctx)


def sign(method: str, target: str, body: bytes, socket: str = "") -> str:
    """The Authorization header value for this request."""
    return f"{SCHEME} {encode(payload(method, target, body), socket)}"


def verify(
    header: str | None,
    method: str,
    target: str,
    body: bytes,
    *,
    max_age: float = 60.0,
    socket: str = "",
    now: float | None = None,
) -> Identity:
    """The identity behind a request's Authorization HEADER, or MungeError saying why not:
    `decode_header` then `check_binding`."""
    ident, data = decode_header(header, socket)
    return check_binding(ident, data, method, target, body, max_age=max_age, now=now)


def decode_header(header: str | None, socket: str = "") -> tuple[Identity, bytes]:
    """The identity munged vouches for in an Authorization HEADER and the credential's payload,
    or MungeError; what the payload is bound to is `check_binding`'s (a server can so refuse a
    request without a good credential before reading its body)."""
    if not header:
        raise MungeError("no credential (expected 'Authorization: MUNGE <credential>')")
    scheme, _, cred = header.strip().partition(" ")
    if scheme != SCHEME or not cred:
        raise MungeError("expected 'Authorization: MUNGE <credential>'")
    return decode(cred, socket)


def check_binding(
    ident: Identity,
    data: bytes,
    method: str,
    target: str,
    body: bytes,
    *,
    max_age: float = 60.0,
    now: float | None = None,
) -> Identity:
    """IDENT, when the payload DATA names exactly this request and was made at most MAX_AGE
    seconds ago; else MungeError."""
    if data != payload(method, target, body) and data != inline_payload(method, target, body):
        raise MungeError(f"the credential was made for another request, not {method} {target}")
    age = (time.time() if now is None else now) - ident.encoded
    if age > max_age:
        raise MungeError(f"MUNGE credential made {age:.0f} s ago (at most {max_age:.0f} s)")
    return ident
