"""One claim per sweep configuration, safe on shared (network) file systems without ``flock``.

A process about to train configuration ``key`` first creates ``<claims dir>/<key>.<generation>.claim``
holding its owner (host, pid, job, time, a random token). The file is written under a temporary name and
then hard-linked into place: ``os.link`` fails when the name exists, atomically, on local and NFS file
systems alike, so exactly one process gets each claim. The owner refreshes the file's mtime (a heartbeat)
while it trains and removes the file when the run is recorded.

A claim is stale, and may be taken over, when
- its owner ran on this host and that pid is gone (a killed sweep: no waiting), or
- its owner is an earlier run of this very cluster job (``SLURM_JOB_ID``; a requeued job resumes), or
- its heartbeat is older than ``stale_after_s`` (an owner on another machine that died).
Taking over creates the next generation's file the same way, so two processes that find one stale claim
cannot both take it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_STALE_AFTER_S = 600.0
HEARTBEAT_S = 30.0
_CLAIM_RE = re.compile(r"^(?P<key>[^.]+)\.(?P<gen>\d+)\.claim$")


@dataclass(frozen=True)
class Owner:
    """Who holds a claim; ``job`` is the cluster job id (``SLURM_JOB_ID``) or None."""

    host: str
    pid: int
    job: str | None
    time: float
    token: str


def current_owner() -> Owner:
    """This process as a claim owner (a fresh token per call: one per claim)."""
    return Owner(socket.gethostname(), os.getpid(), os.environ.get("SLURM_JOB_ID"), time.time(), uuid.uuid4().hex)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # a killed process nobody reaped yet (a container's init may never reap) is dead too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_stale(owner: Owner | None, heartbeat_age_s: float, stale_after_s: float) -> bool:
    """The stale-claim rule (module docstring); ``owner`` None = an unreadable claim file, which is judged
    by its heartbeat alone."""
    if owner is not None:
        me = current_owner()
        if owner.host == me.host and not _pid_alive(owner.pid):
            return True
        if owner.job is not None and owner.job == me.job and (owner.host, owner.pid) != (me.host, me.pid):
            return True
    return heartbeat_age_s > stale_after_s


def _read_owner(path: Path) -> Owner | None:
    try:
        return Owner(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _generations(claims_dir: Path, key: str) -> list[tuple[int, Path]]:
    out = []
    for p in claims_dir.glob(f"{key}.*.claim"):
        m = _CLAIM_RE.match(p.name)
        if m and m["key"] == key:
            out.append((int(m["gen"]), p))
    return sorted(out)


def _create(path: Path, owner: Owner) -> bool:
    """Create ``path`` holding ``owner`` iff it does not exist (write a temporary file, hard-link it in)."""
    tmp = path.with_name(f".{path.name}.{owner.token}.tmp")
    tmp.write_text(json.dumps(asdict(owner)))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        # NFS may report a link that did succeed as failed (lost reply): the content tells whose it is
        other = _read_owner(path)
        return other is not None and other.token == owner.token
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class Claim:
    """A claim this process holds; :meth:`release` it once the run is recorded (or failed)."""

    path: Path
    owner: Owner

    def release(self) -> None:
        _HEARTBEAT.forget(self.path)
        if (_read_owner(self.path) or self.owner).token == self.owner.token:  # not taken over meanwhile
            self.path.unlink(missing_ok=True)


def claim(claims_dir: str | Path, key: str, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> Claim | None:
    """Claim ``key`` for this process: a :class:`Claim`, or None when another live owner holds it."""
    if not key or "." in key or "/" in key:
        raise ValueError(f"key must be a non-empty name without '.' or '/', got {key!r}")
    if stale_after_s <= 0:
        raise ValueError(f"stale_after_s must be > 0, got {stale_after_s!r}")
    claims_dir = Path(claims_dir)
    claims_dir.mkdir(parents=True, exist_ok=True)
    gens = _generations(claims_dir, key)
    gen = 0
    if gens:
        last_gen, last = gens[-1]
        try:
            age = time.time() - last.stat().st_mtime
        except FileNotFoundError:  # released just now: try the same generation again
            last_gen -= 1
        else:
            if not is_stale(_read_owner(last), age, stale_after_s):
                return None
        gen = last_gen + 1
    owner = current_owner()
    path = claims_dir / f"{key}.{gen}.claim"
    if not _create(path, owner):
        return None
    for _, old in gens:  # superseded generations: only clutter now
        old.unlink(missing_ok=True)
    _HEARTBEAT.add(path)
    return Claim(path, owner)


def live_claims(claims_dir: str | Path, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> dict[str, Owner | None]:
    """{key: owner} of every claim in ``claims_dir`` that is not stale (what other processes run now)."""
    claims_dir = Path(claims_dir)
    out: dict[str, Owner | None] = {}
    for p in claims_dir.glob("*.claim") if claims_dir.is_dir() else ():
        m = _CLAIM_RE.match(p.name)
        try:
            age = time.time() - p.stat().st_mtime
        except FileNotFoundError:
            continue
        owner = _read_owner(p)
        if m and not is_stale(owner, age, stale_after_s):
            out[m["key"]] = owner
    return out


class _Heartbeat:
    """A daemon thread that refreshes the mtime of this process's claims every ``HEARTBEAT_S`` seconds."""

    def __init__(self) -> None:
        self._paths: set[Path] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, path: Path) -> None:
        with self._lock:
            self._paths.add(path)
            if self._thread is None or self._pid != os.getpid():  # threads do not survive a fork
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="claim-heartbeat", daemon=True)
                self._thread.start()

    def forget(self, path: Path) -> None:
        with self._lock:
            self._paths.discard(path)

    def beat(self) -> None:
        """Refresh every held claim's mtime now."""
        with self._lock:
            paths = list(self._paths)
        for p in paths:
            try:
                os.utime(p)
            except FileNotFoundError:
                self.forget(p)

    def _run(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            self.beat()


_HEARTBEAT = _Heartbeat()


def remove_if_empty(claims_dir: str | Path) -> None:
    """Remove ``claims_dir`` when no claim is left in it (a finished sweep leaves no clutter)."""
    try:
        Path(claims_dir).rmdir()
    except OSError:
        pass
