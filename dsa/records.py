"""Recorded results (JSON under ``data/``) with their provenance, and labels saying where a figure's numbers
come from: a fresh run in this kernel, or data recorded earlier (on which device, at which commit).

A record is a JSON object with a ``provenance`` key::

    {"provenance": {"git_commit": "...", "git_dirty": false, "torch_version": "2.13.0",
                    "device": "NVIDIA H100 80GB HBM3", "date": "2026-11-23T10:00:00+00:00",
                    "config": {...}},
     ... the data ...}

GPU runs write records with :func:`save_record`; notebooks read them with :func:`load_records`, which
prints what it read and, when the environment variable ``DSA_RECORDS_LOG`` names a file, appends one line per
file read there (``python -m dsa.report`` uses this to list the recorded data each notebook used).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .provenance import REPO_ROOT, device_name, git_commit, provenance, write_json_atomic


def data_dir() -> Path:
    """``$DSA_DATA_DIR`` or ``<repo>/data``."""
    return Path(os.environ.get("DSA_DATA_DIR", REPO_ROOT / "data"))


def default_device() -> str:
    import torch  # noqa: PLC0415

    return "cuda" if torch.cuda.is_available() else "cpu"


def save_record(name: str, data: dict, config: dict | None = None, device: Any = None) -> Path:
    """Write ``data`` (JSON-serialisable) to ``data/<name>.json`` with a ``provenance`` block
    (dsa.provenance plus the ``config`` that produced it); returns the path."""
    if "provenance" in data:
        raise ValueError("data must not carry its own 'provenance' key: it is added here")
    prov = provenance(device if device is not None else default_device())
    prov["config"] = dict(config or {})
    return write_json_atomic(data_dir() / f"{name}.json", {"provenance": prov, **data})


def load_records(pattern: str, *, root: str | Path | None = None, required: bool = False) -> list[dict]:
    """Records matching the glob ``pattern`` under ``root`` (default ``data/``; training runs written by
    ``dsa.train`` live under ``runs/``: pass ``root=REPO_ROOT / "runs"``), sorted by path, each with ``_path``
    added.

    Every record must carry a ``provenance`` dict with at least git_commit, device and date; a file without
    one is an error (a number of unknown origin must not reach a figure). Prints each file read.
    required: raise FileNotFoundError when nothing matches (default: return []).
    """
    root = Path(root) if root is not None else data_dir()
    paths = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix == ".json")
    if not paths and required:
        raise FileNotFoundError(f"no recorded data matches {pattern!r} under {root}")
    out = []
    for p in paths:
        rec = json.loads(p.read_text())
        prov = rec.get("provenance") if isinstance(rec, dict) else None
        missing = [k for k in ("git_commit", "device", "date") if not isinstance(prov, dict) or k not in prov]
        if missing:
            raise ValueError(f"{p}: record lacks provenance field(s) {missing}")
        rec["_path"] = str(p)
        out.append(rec)
        rel = _rel(p)
        print(f"[records] read {rel}: {describe_provenance(prov)}")
        log = os.environ.get("DSA_RECORDS_LOG")
        if log:
            with open(log, "a") as f:
                f.write(json.dumps({"path": rel, "provenance": prov}) + "\n")
    return out


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def describe_provenance(prov: dict) -> str:
    """'recorded on NVIDIA H100 80GB HBM3, commit 1a2b3c4, 2026-11-22, torch 2.11.0'."""
    commit = str(prov.get("git_commit", "unknown"))[:7] + ("+dirty" if prov.get("git_dirty") else "")
    date = str(prov.get("date", "?"))[:10]
    return f"recorded on {prov.get('device', '?')}, commit {commit}, {date}, torch {prov.get('torch_version', '?')}"


def fresh_run_label(device: Any = None) -> str:
    """'fresh run on cpu (x86_64, 2 cores), commit 1a2b3c4+dirty, torch 2.13.0': for figures computed now."""
    import torch  # noqa: PLC0415

    git = git_commit()
    commit = (git["commit"] or "unknown")[:7] + ("+dirty" if git["dirty"] else "")
    dev = device_name(device if device is not None else default_device())
    return f"fresh run on {dev}, commit {commit}, torch {torch.__version__}"


__all__ = [
    "data_dir",
    "describe_provenance",
    "fresh_run_label",
    "load_records",
    "save_record",
]
