"""Directories of hook reports: the agent's inbox on each node, the aggregator's reports directory
on the head node.

A hook writes each report as one line of JSON, in one write, under its final name (a rename would
cost the hook a process).  A reader therefore takes a file only once its closing newline is
there; one still without it after INCOMPLETE_GRACE_SECONDS was left half-written (a hook killed
at its limit, a full disk) and is set aside in bad/, like a malformed one, with one log line.

A report is trusted by where it lies and who wrote it, not by what it says: the directory must
belong to a trusted uid and be writable by nobody else (`nomadectl install-hooks` makes the
head node's reports/ the SlurmUser's, mode 0700; the agent makes each node's inbox root's, 0700),
and each file must be a regular file (never followed through a link) owned by a trusted uid.  A
file that fails is set aside with the reason; a directory that fails is not read at all.  A FIFO
or a link named like a report is set aside without being opened through (O_NONBLOCK, O_NOFOLLOW).
Setting aside moves into bad/ only when bad/ is a real directory of the reader or a trusted uid,
never through a link someone planted there; otherwise the report is removed.  A report nested
deeper than MAX_REPORT_DEPTH is malformed like any other, not retried.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .jsonin import loads
from .text import printable

log = logging.getLogger("nomade.reports")

INCOMPLETE_GRACE_SECONDS = 10.0


class Incomplete(Exception):
    """A hook report still being written (its closing newline has not arrived)."""


class Untrusted(ValueError):
    """A report, or a reports directory, that a user other than the trusted ones could have made."""


MAX_REPORT_BYTES = 1 << 20
MAX_REPORT_DEPTH = 32  # as a report sent over HTTP (aggregator/daemon/api.py MAX_JSON_DEPTH)


def read_report(path: Path, trusted: frozenset[int] | None = None) -> dict[str, Any]:
    """One report: a JSON object on one line.  Raises Incomplete until the newline is there,
    Untrusted when it is not a regular file owned by a TRUSTED uid, OSError or ValueError when it
    cannot be read as one."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Untrusted("not a regular file")
        if trusted is not None and st.st_uid not in trusted:
            raise Untrusted(f"owned by uid {st.st_uid}, not by {_names(trusted)}")
        if st.st_size > MAX_REPORT_BYTES:
            raise ValueError(f"{st.st_size} bytes, more than a report's {MAX_REPORT_BYTES}")
        text = os.read(fd, MAX_REPORT_BYTES + 1).decode(
            "utf-8", "replace"
        )  # a job name's odd bytes
    finally:
        os.close(fd)
    if not text.endswith("\n"):
        raise Incomplete(path.name)
    data = loads(text, MAX_REPORT_DEPTH)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def _names(uids: frozenset[int]) -> str:
    import pwd

    def name(uid: int) -> str:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)

    return " or ".join(sorted(name(u) for u in uids))


def check_directory(path: Path, trusted: frozenset[int] | None) -> None:
    """Untrusted when PATH is not a directory of a TRUSTED uid that nobody else may write to."""
    if trusted is None:
        return
    st = os.stat(path, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        raise Untrusted(f"{path} is not a directory")
    if st.st_uid not in trusted:
        raise Untrusted(f"{path} belongs to uid {st.st_uid}, not to {_names(trusted)}")
    if st.st_mode & 0o022:
        raise Untrusted(f"{path} may be written by others (mode {st.st_mode & 0o7777:o})")


class ReportDir:
    def __init__(self, path: Path | str, trusted: frozenset[int] | None = None) -> None:
        """TRUSTED: the uids whose reports are believed (None: any, for tests of the format)."""
        self.path = Path(path)
        self.trusted = trusted
        self._untrusted_logged = 0.0

    def ready(
        self, skip: set[str] | frozenset[str] = frozenset()
    ) -> Iterator[tuple[Path, dict[str, Any]]]:
        """The complete reports, oldest name first (names begin with the hook's time in µs),
        except those named in SKIP; unreadable ones are set aside on the way."""
        try:
            check_directory(self.path, self.trusted)
            names = sorted(e.name for e in os.scandir(self.path) if e.name.endswith(".json"))
        except FileNotFoundError:
            return
        except Untrusted as exc:
            if time.monotonic() - self._untrusted_logged > 60:
                log.error(
                    "hook reports not read: %s (a user could forge them; nomadectl "
                    "install-hooks sets it up)",
                    exc,
                )
                self._untrusted_logged = time.monotonic()
            return
        for name in names:
            if name in skip:
                continue
            path = self.path / name
            try:
                report = read_report(path, self.trusted)
            except FileNotFoundError:
                continue  # taken by someone else meanwhile
            except Incomplete:
                try:
                    if time.time() - path.stat().st_mtime < INCOMPLETE_GRACE_SECONDS:
                        continue  # being written: taken at the next look
                except FileNotFoundError:
                    continue
                self.set_aside(path, f"no end of line after {INCOMPLETE_GRACE_SECONDS:g} s")
                continue
            except (OSError, ValueError) as exc:
                self.set_aside(path, str(exc))
                continue
            yield path, report

    def set_aside(self, path: Path, why: str) -> None:
        """Move PATH into bad/ for an administrator to look at, with one log line; remove it
        instead when bad/ is not a real directory of this reader or a trusted uid (a link or a
        file a user planted there would otherwise take the report wherever it points)."""
        shown, why = printable(str(path), 400, "?"), printable(why, 400, "?")
        bad = self.path / "bad"
        try:
            fd = self._bad_directory(bad)
        except (OSError, Untrusted) as exc:
            log.warning(
                "hook report %s unreadable (%s); removed, not moved: %s",
                shown,
                why,
                printable(str(exc), 400, "?"),
            )
            _remove(path)
            return
        try:
            os.replace(path, path.name, dst_dir_fd=fd)  # a link is moved, never followed
        except FileNotFoundError:
            return  # taken by someone else meanwhile
        except OSError as exc:
            log.warning(
                "hook report %s unreadable (%s); cannot move it to %s (%s), removed",
                shown,
                why,
                bad,
                exc.strerror or exc,
            )
            _remove(path)
            return
        finally:
            os.close(fd)
        log.warning("hook report %s unreadable (%s); moved to %s", shown, why, bad)

    def _bad_directory(self, bad: Path) -> int:
        """An open descriptor of BAD, made (0700) if absent; Untrusted when BAD is a link, not a
        directory, or belongs to a uid other than this reader's and the trusted ones."""
        try:
            os.mkdir(bad, 0o700)
        except FileExistsError:
            pass
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(bad, flags)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise Untrusted(f"{bad} is a link or not a directory") from None
            raise
        owners = {os.geteuid()} | (self.trusted or set())
        owner = os.fstat(fd).st_uid
        if owner not in owners:
            os.close(fd)
            raise Untrusted(f"{bad} belongs to uid {owner}, not to {_names(frozenset(owners))}")
        return fd


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # a directory named like a report
        log.warning("cannot remove %s (%s)", printable(str(path), 400, "?"), exc.strerror or exc)
