"""Recorded results (JSON under ``data/``) with their provenance, and labels saying where a figure's numbers
come from: a fresh run in this kernel, or data recorded earlier (on which device, at which commit).

A record is a JSON object with a ``provenance`` key::

    {"provenance": {"git_commit": "...", "git_dirty": false, "torch_version": "2.13.0",
                    "device": "NVIDIA H100 80GB HBM3", "date": "2026-11-23T10:00:00+00:00",
                    "config": {...}},
     ... the data ...}

GPU runs write records with :func:`save_record`; notebooks read them with :func:`load_records`, which
prints what it read and, when the environment variable ``DSA_RECORDS_LOG`` names a file, appends one line per
file read there (``python -m dsa.study.report`` uses this to list the recorded data each notebook used).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .provenance import REPO_ROOT, device_name, git_commit, provenance, write_json_atomic


def data_dir() -> Path:
    """``$DSA_DATA_DIR`` or ``<repo>/data``: the root of the recorded results (the corpus cache is another
    variable, ``$DSA_CACHE_DIR``: ``dsa.text.corpus``)."""
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


def load_records(pattern: str, *, root: str | Path | None = None, required: bool = False,
                 upgrade: Callable[[dict], dict] | None = None) -> list[dict]:
    """Records matching the glob ``pattern`` under ``root`` (default ``data/``; training runs written by
    ``dsa.train.trainer`` live under ``runs/``: pass ``root=REPO_ROOT / "runs"``), sorted by path, each with ``_path``
    added.

    Every record must carry a ``provenance`` dict with at least git_commit, device and date; a file without
    one is an error (a number of unknown origin must not reach a figure). Prints each file read.
    required: raise FileNotFoundError when nothing matches (default: return []).
    upgrade: applied to each record before its provenance is checked (a reader of an older schema, e.g.
    ``dsa.study.legacy.bench_record``).
    """
    root = Path(root) if root is not None else data_dir()
    paths = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix == ".json")
    if not paths and required:
        raise FileNotFoundError(f"no recorded data matches {pattern!r} under {root}")
    out = []
    for p in paths:
        rec = json.loads(p.read_text())
        if upgrade is not None:
            rec = upgrade(rec)
        prov = rec.get("provenance") if isinstance(rec, dict) else None
        _check_provenance(prov, str(p))
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
    torch_v = prov.get("torch_version", "?")
    return f"recorded on {prov.get('device', '?')}, commit {commit}, {date}, torch {torch_v}"


def summarize_provenance(provs: Iterable[dict]) -> str:
    """One line for many records: each distinct (device, commit, date, torch) with its count, e.g.
    'recorded on NVIDIA H100 80GB HBM3, commit d93bd41, 2026-11-23, torch 2.11.0 (20 runs)'; '' if none."""
    counts: dict[str, int] = {}
    for prov in provs:
        text = describe_provenance(prov or {})
        counts[text] = counts.get(text, 0) + 1
    return "; ".join(f"{t} ({n} run{'s' if n != 1 else ''})" for t, n in counts.items())


def _check_provenance(prov: Any, where: str) -> None:
    missing = [k for k in ("git_commit", "device", "date") if not isinstance(prov, dict) or k not in prov]
    if missing:
        raise ValueError(f"{where}: record lacks provenance field(s) {missing}")


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of one JSON-lines file (one finished run per line, as ``dsa.train.sweep`` appends them).

    A torn last line (a writer killed mid-line) is skipped with a printed warning; a bad line elsewhere is
    an error naming the file and line. Every record must carry a ``provenance`` (git_commit, device, date).
    A configuration recorded twice (same ``key``) counts once: the first record is kept, with a warning
    (statistics must not count one seed twice).
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                print(f"[records] warning: {_rel(path)}: ignoring a torn last line (a run killed while writing)")
                continue
            raise ValueError(f"{path}:{i + 1}: not a JSON line: {e}") from e
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{i + 1}: expected a JSON object per line")
        _check_provenance(rec.get("provenance"), f"{path}:{i + 1}")
        out.append(rec)
    return drop_duplicate_keys(out, _rel(path))


def drop_duplicate_keys(records: Iterable[dict], where: str | None) -> list[dict]:
    """``records`` without the repeats of a ``key`` already seen (the first is kept; records without a key
    are all kept), printing one warning naming ``where`` and the number dropped (None: no warning). Two
    processes that ran one configuration each append a record; counting both would weigh that seed twice."""
    seen: set = set()
    out, dropped = [], 0
    for r in records:
        k = r.get("key")
        if k is not None and k in seen:
            dropped += 1
            continue
        if k is not None:
            seen.add(k)
        out.append(r)
    if dropped and where is not None:
        print(f"[records] warning: {where}: dropped {dropped} duplicate record(s) of a configuration "
              "recorded more than once (same key; the first is kept)")
    return out


# Shards: ``python -m dsa.train.sweep --shard i/N --out X.jsonl`` writes ``X.shard-i-of-N.jsonl`` next to
# ``X.jsonl``; readers take the base file and its shards as one results set.
_SHARD_INFIX = ".shard-"


def shard_path(path: str | Path, index: int, count: int) -> Path:
    """The file shard ``index`` of ``count`` writes for the results file ``path``:
    ``runs/x.jsonl`` -> ``runs/x.shard-0-of-2.jsonl``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ValueError(f"index must be an int in [0, count={count}), got {index!r}")
    path = Path(path)
    return path.with_name(f"{path.stem}{_SHARD_INFIX}{index}-of-{count}{path.suffix}")


def result_files(path: str | Path) -> list[Path]:
    """The existing files of the results set named by ``path``: ``path`` itself and its shard files
    (:func:`shard_path`, any shard count), base first, then the shards sorted by name."""
    path = Path(path)
    shards = sorted(path.parent.glob(f"{path.stem}{_SHARD_INFIX}*-of-*{path.suffix}"))
    return ([path] if path.is_file() else []) + [p for p in shards if p.is_file()]


def _jsonl_paths(root: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` under ``root``, plus the shard files of each matching name, so that a
    notebook's ``gpu/exp.jsonl`` also reads ``gpu/exp.shard-0-of-4.jsonl`` ... (even without the base)."""
    found = {p for p in root.glob(pattern) if p.is_file() and p.suffix == ".jsonl"}
    if pattern.endswith(".jsonl"):
        found |= {p for p in root.glob(pattern[: -len(".jsonl")] + f"{_SHARD_INFIX}*-of-*.jsonl") if p.is_file()}
    return sorted(found)


def load_jsonl_records(pattern: str, *, root: str | Path | None = None, required: bool = False) -> list[dict]:
    """Run records from the JSON-lines files matching the glob ``pattern`` under ``root`` (default
    ``data/``), e.g. ``gpu/exp4_reproduce.jsonl``, and from the shard files of each matching name
    (``gpu/exp4_reproduce.shard-0-of-2.jsonl``, ...; shards read as one file): all lines of all files, in
    file order, each with ``_path`` (and ``_line``) added; a configuration (``key``) found more than once is
    kept once, with a warning. Prints one line per file with a summary of where its runs were recorded, and
    logs the file to ``$DSA_RECORDS_LOG`` like :func:`load_records` (with the first record's provenance and
    the number of runs). required: raise FileNotFoundError when nothing matches (default: return [])."""
    root = Path(root) if root is not None else data_dir()
    paths = _jsonl_paths(root, pattern)
    if not paths and required:
        raise FileNotFoundError(f"no recorded data matches {pattern!r} under {root}")
    out = []
    for p in paths:
        recs = read_jsonl(p)
        rel = _rel(p)
        for i, rec in enumerate(recs):
            rec["_path"] = str(p)
            rec["_line"] = i
        out.extend(recs)
        print(f"[records] read {rel}: {summarize_provenance(r['provenance'] for r in recs) or 'no complete runs'}")
        log = os.environ.get("DSA_RECORDS_LOG")
        if log and recs:
            with open(log, "a") as f:
                f.write(json.dumps({"path": rel, "provenance": recs[0]["provenance"], "n_records": len(recs)}) + "\n")
    return drop_duplicate_keys(out, pattern) if len(paths) > 1 else out


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
    "drop_duplicate_keys",
    "fresh_run_label",
    "load_jsonl_records",
    "load_records",
    "read_jsonl",
    "result_files",
    "save_record",
    "shard_path",
    "summarize_provenance",
]
