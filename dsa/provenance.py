"""Provenance recorded with every result: git commit, versions, device, date."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_commit() -> dict:
    """{'commit': full sha or None, 'dirty': bool or None} of the repository holding this package.

    DSA_GIT_COMMIT, when set, wins: a copy of the tree on a lent machine may carry a stale .git. DSA_GIT_DIRTY
    ('0' or '1') then gives the dirty flag of the tree that was sent (scripts/gpu/gpu_env.sh sets both); without
    it the flag comes from git when the local checkout is at that commit (else None: unknown). A short hash is
    expanded to the full one where the local git knows the commit."""
    env = os.environ.get("DSA_GIT_COMMIT")
    head = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    local_dirty = None if status is None else bool(status)
    if not env:
        return {"commit": head or None, "dirty": local_dirty if head else None}
    full = _git("rev-parse", "--verify", "--quiet", f"{env}^{{commit}}") if len(env) < 40 else None
    commit = full or env
    dirty = {"0": False, "1": True}.get(os.environ.get("DSA_GIT_DIRTY", ""))
    if dirty is None and head and head == commit:
        dirty = local_dirty
    return {"commit": commit, "dirty": dirty}


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def provenance(device: torch.device | str) -> dict:
    git = git_commit()
    info = {
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": device_name(device),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import triton  # noqa: PLC0415

        info["triton_version"] = triton.__version__
    except ImportError:
        info["triton_version"] = None
    if torch.cuda.is_available():
        info["cuda_version"] = torch.version.cuda
    return info


def write_json_atomic(path: str | Path, obj: dict) -> Path:
    """Write JSON to a temp file in the same folder and rename it: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)
    return path


def run_writing_json(run: Callable[..., dict], cfg: Any, out: str | Path, **kwargs: Any) -> dict:
    """``run(cfg, on_row=..., **kwargs)`` with its result rewritten to ``out`` (atomically) after every row and
    at the end: a benchmark stopped half-way still leaves the numbers it has."""
    res = run(cfg, on_row=lambda r: write_json_atomic(out, r), **kwargs)
    write_json_atomic(out, res)
    return res
