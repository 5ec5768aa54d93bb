"""Installing NØMADE's Slurm hooks: copy them to a world-readable prefix, write their settings,
print (or write) the slurm.conf lines.  Uninstalling removes exactly what was installed, listed
in a manifest, and leaves no trace.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
from pathlib import Path

import hooks as hooks_pkg
from nomade_common.config import Config

WRAPPERS = {
    "Prolog": "prolog",
    "Epilog": "epilog",
    "TaskProlog": "taskprolog",
    "PrologSlurmctld": "prologslurmctld",
    "EpilogSlurmctld": "epilogslurmctld",
}
FILES = [*WRAPPERS.values(), "node_hook.sh", "controller_hook.sh"]
MANIFEST = ".nomade-manifest.json"
# The wrappers written from hooks/wrapper.sh: (hook body, what the hook does).  TaskProlog,
# whose output Slurm reads, has its own wrapper (hooks/taskprolog).
FROM_TEMPLATE = {
    "prolog": ("node_hook.sh", "hands the job's start to the local agent"),
    "epilog": ("node_hook.sh", "hands the job's end to the local agent"),
    "prologslurmctld": ("controller_hook.sh", "tells the aggregator that the job starts"),
    "epilogslurmctld": ("controller_hook.sh", "tells the aggregator that the job has ended"),
}


def hook_text(name: str, timeout_seconds: float) -> str:
    """The text installed as hook file NAME, for a hard limit of TIMEOUT_SECONDS."""
    source = Path(hooks_pkg.__file__).parent
    if name in FROM_TEMPLATE:
        body, purpose = FROM_TEMPLATE[name]
        lines = (source / "wrapper.sh").read_text(encoding="utf-8").splitlines(keepends=True)
        text = "".join(line for line in lines if not line.startswith("## "))
        text = text.replace("@HOOK@", name).replace("@BODY@", body).replace("@PURPOSE@", purpose)
    else:
        text = (source / name).read_text(encoding="utf-8")
    if name in WRAPPERS.values():
        text = text.replace("\nlimit_us=1000000\n", f"\nlimit_us={round(timeout_seconds * 1e6)}\n")
    return text


def slurm_conf_lines(prefix: str) -> list[str]:
    lines = [f"{key}={prefix}/{name}" for key, name in WRAPPERS.items()]
    # Alloc: the Prolog runs at allocation, so the agent samples from the very start;
    # Contain: the extern step's cgroup holds processes that reach the node outside srun.
    # PrologFlags is a single slurm.conf key that sites often set already, so it is asked for
    # rather than written.
    return [
        "# NØMADE hooks (nomadectl install-hooks); also needs PrologFlags=Alloc,Contain",
        *lines,
    ]


def hook_settings(cfg: Config) -> dict:
    h = cfg.hooks
    return {
        "timeout_seconds": h.timeout_seconds,
        "aggregator_url": h.aggregator_url,
        "spool_dir": cfg.agent.spool_dir,
        "state_dir": h.state_dir,
        "task_notice": h.task_notice,
        "breaker_failures": h.breaker_failures,
        "breaker_seconds": h.breaker_seconds,
        # Empty: the head-node hooks post over HTTP.
        "controller_spool": h.reports_dir if h.controller_spool() else "",
        # Over HTTP: munged's socket for the hooks' credentials, the CA for an https:// URL.
        "munge_socket": cfg.security.munge_socket,
        "tls_ca": cfg.security.tls_ca,
    }


def shell_settings(cfg: Config) -> str:
    """The node hooks' settings, as shell assignments (node_hook.sh sources them)."""
    values = {
        "NOMADE_SPOOL_DIR": cfg.agent.spool_dir,
        "NOMADE_STATE_DIR": cfg.hooks.state_dir,
        "NOMADE_TASK_NOTICE": "1" if cfg.hooks.task_notice else "0",
    }
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def install(
    cfg: Config, prefix: str | None = None, include: str | None = None, slurm_user: str = "slurm"
) -> list[str]:
    """Install the hooks; return the slurm.conf lines (also written to INCLUDE if given)."""
    dest = Path(prefix or cfg.hooks.prefix)
    earlier = _read_manifest(dest)  # a re-install (upgrade) keeps what the first one found
    created_dirs = _missing_dirs(dest)
    dest.mkdir(parents=True, exist_ok=True, mode=0o755)
    for name in FILES:
        (dest / name).write_text(hook_text(name, cfg.hooks.timeout_seconds), encoding="utf-8")
        os.chmod(dest / name, 0o755)
    (dest / "hooks.json").write_text(
        json.dumps(hook_settings(cfg), indent=1) + "\n", encoding="utf-8"
    )
    os.chmod(dest / "hooks.json", 0o644)
    (dest / "hooks.env").write_text(shell_settings(cfg), encoding="utf-8")
    os.chmod(dest / "hooks.env", 0o644)
    state = Path(cfg.hooks.state_dir)
    state_created_dirs = _missing_dirs(state)
    state_owner = None if state_created_dirs else [state.stat().st_uid, state.stat().st_gid]
    state.mkdir(parents=True, exist_ok=True)
    try:
        pw = pwd.getpwnam(slurm_user)
        os.chown(state, pw.pw_uid, pw.pw_gid)
    except (KeyError, PermissionError):
        pw = None  # no such user here: the head-node hooks then log nothing, and still exit 0
    reports = Path(cfg.hooks.reports_dir)
    reports_created = cfg.hooks.controller_spool() and not reports.exists()
    if reports_created:
        # Only SlurmUser writes here and only the aggregator (root) reads: a job's user must
        # not be able to forge a job's start.
        reports.mkdir(mode=0o700)
        if pw is not None:
            os.chown(reports, pw.pw_uid, pw.pw_gid)
    lines = slurm_conf_lines(str(dest))
    include_before = None
    if include:
        try:
            include_before = Path(include).read_text(encoding="utf-8")
        except FileNotFoundError:
            include_before = None
        Path(include).write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = {
        "files": [*FILES, "hooks.json", "hooks.env"],
        "created_dirs": created_dirs,
        "state_path": str(state),
        "state_dir": str(state) if state_created_dirs else None,
        "state_created_dirs": state_created_dirs,
        "state_owner_before": state_owner,
        "reports_dir": str(reports) if reports_created else None,
        "include": include,
        "include_before": include_before,
    }
    if earlier:
        manifest["created_dirs"] = earlier.get("created_dirs") or []
        if earlier.get("state_path") == str(state):
            for key in ("state_dir", "state_created_dirs", "state_owner_before"):
                manifest[key] = earlier.get(key)
            manifest["reports_dir"] = earlier.get("reports_dir") or manifest["reports_dir"]
        if earlier.get("include") == include:
            manifest["include_before"] = earlier.get("include_before")
    (dest / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return lines


def uninstall(cfg: Config, prefix: str | None = None, reconfigure=None) -> list[str]:
    """Remove what install() wrote; return what was removed.

    The include file is restored first and RECONFIGURE (a callable that makes Slurm reread its
    configuration and returns once it no longer names the hooks) runs before any hook file is
    deleted: a Prolog or Epilog path that Slurm still names but that no longer exists fails, and
    a failing Epilog drains the node.
    """
    dest = Path(prefix or cfg.hooks.prefix)
    manifest = _read_manifest(dest)
    if manifest is None:
        return []
    removed = []
    include = manifest.get("include")
    if include:
        before = manifest.get("include_before")
        if before is None:
            Path(include).unlink(missing_ok=True)
        else:
            Path(include).write_text(before, encoding="utf-8")
        removed.append(f"{include} (restored)")
    if reconfigure is not None:
        reconfigure(str(dest))
    for name in [*manifest["files"], MANIFEST]:
        path = dest / name
        if path.exists():
            path.unlink()
            removed.append(str(path))
    if manifest.get("reports_dir"):
        shutil.rmtree(manifest["reports_dir"], ignore_errors=True)
        removed.append(manifest["reports_dir"])
    if manifest.get("state_dir"):
        shutil.rmtree(manifest["state_dir"], ignore_errors=True)
        removed.append(manifest["state_dir"])
        removed += _remove_dirs((manifest.get("state_created_dirs") or [])[:-1])
    elif manifest.get("state_owner_before"):
        try:
            os.chown(manifest["state_path"], *manifest["state_owner_before"])
        except OSError:
            pass
    removed += _remove_dirs(manifest.get("created_dirs") or [])
    return removed


def _read_manifest(dest: Path) -> dict | None:
    try:
        manifest = json.loads((dest / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _missing_dirs(path: Path) -> list[str]:
    """PATH and those of its parents that do not exist yet, outermost first."""
    return [str(p) for p in [path, *path.parents] if not p.exists()][::-1]


def _remove_dirs(created: list[str]) -> list[str]:
    """Remove the directories install created, innermost first, while they are empty."""
    removed = []
    for d in reversed(created):
        try:
            os.rmdir(d)
            removed.append(d)
        except OSError:
            break  # not empty: something else lives there now
    return removed


def controller_hooks_unset() -> bool | None:
    """Whether the running slurmctld shows no PrologSlurmctld (None: scontrol cannot tell).

    Slurm 22.05 decides when slurmctld starts whether it runs PrologSlurmctld and
    EpilogSlurmctld at all: one added later by `scontrol reconfigure` shows in `scontrol show
    config` but never runs, so NØMADE would never hear of a job's start.  Read before the
    hooks are installed, "unset" means slurmctld must be restarted once."""
    from aggregator.admin.syscheck import slurm_config

    value = slurm_config().get("PrologSlurmctld")
    return None if value is None else value in ("", "(null)")


def slurm_reconfigure(prefix: str, deadline: float = 30.0, settle: float = 3.0) -> None:
    """`scontrol reconfigure`, then wait until slurmctld no longer names PREFIX and give the
    slurmd daemons SETTLE seconds to take the new configuration."""
    import subprocess
    import time

    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return
    try:
        shown = subprocess.run(
            [scontrol, "show", "config"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return
    if prefix not in shown:
        return  # this Slurm does not run these hooks: nothing to wait for
    subprocess.run([scontrol, "reconfigure"], capture_output=True, timeout=60)
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        shown = subprocess.run(
            [scontrol, "show", "config"], capture_output=True, text=True, timeout=30
        ).stdout
        if prefix not in shown:
            break
        time.sleep(0.5)
    time.sleep(settle)
