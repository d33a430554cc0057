"""Training checkpoints: one file holds everything a run needs to continue bit for bit, or to start another.

A checkpoint is a ``torch.save`` dict (read back with ``weights_only=True``: plain containers and tensors,
no pickled classes)::

    format, version        "dsa.train.checkpoint", 1
    config                 the TrainConfig as a dict (dense/warm-up step counts resolved)
    model_config           the ModelConfig as a dict: :func:`load_model` rebuilds the model from it alone
    state_dict             the model's weights (the unwrapped model, never a DDP wrapper)
    optimizers             {"main": AdamW state, "indexer": AdamW state or None}
    progress               {"it", "lm_step", "phase", "lr"}: iterations done (LM + warm-up), LM steps done
                           (the LR schedule's position), the phase of the last iteration, its learning rate
    data                   {"data_seed", "train_seed", "warm_seed", "world_size", "next_train_batch",
                           "next_warm_batch"}: batches are a pure function of (seed, index)
                           (:mod:`dsa.text.batches`), so the samplers' seeds and the next index each reads
                           (rank r reads index + r) are the whole data position
    rng                    torch CPU (and CUDA) generator states, Python's ``random``, numpy's global state
    history, step_times    the run record so far, so a resumed run reports the whole run
    provenance             :func:`dsa.provenance.provenance` when the file was written

A file holding only ``model_config`` and ``state_dict`` (what notebook 01 documented before training
wrote checkpoints) still loads with :func:`load_model`. Writes are atomic (a temp file in the same folder,
then a rename): a run killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsa.model.config import ModelConfig
from dsa.model.lm import TransformerLM

FORMAT = "dsa.train.checkpoint"
VERSION = 1
TRAINING_KEYS = ("config", "optimizers", "progress", "data", "rng", "history", "step_times")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Writes ``state`` (the dict described in the module docstring; ``format``/``version`` are added) to
    ``path`` atomically and returns the path. Folders are created as needed."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    for key in ("model_config", "state_dict"):
        if key not in state:
            raise ValueError(f"state must have a {key!r} entry")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, arg: str = "path") -> dict:
    """The dict stored at ``path`` (tensors mapped to ``map_location``). ``arg`` names the caller's argument
    in the errors: FileNotFoundError when there is no file, ValueError when it is not a readable checkpoint
    (corrupted, truncated, another format) or lacks ``model_config``/``state_dict``."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(f"{arg} must be a non-empty path, got {path!r}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{arg}: no checkpoint file at {str(p)!r}")
    try:
        ck = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a damaged file (RuntimeError, EOFError, pickle errors)
        raise ValueError(f"{arg}: {str(p)!r} is not a readable checkpoint (corrupted or truncated?): "
                         f"{type(e).__name__}: {str(e)[:200]}") from e
    if not isinstance(ck, dict) or "model_config" not in ck or "state_dict" not in ck:
        raise ValueError(f"{arg}: {str(p)!r} is not a model checkpoint (a dict with 'model_config' and "
                         f"'state_dict' entries)")
    if ck.get("format", FORMAT) != FORMAT or ck.get("version", VERSION) > VERSION:
        raise ValueError(f"{arg}: {str(p)!r} has format {ck.get('format')!r} version {ck.get('version')!r}; "
                         f"this code reads {FORMAT!r} up to version {VERSION}")
    return ck


def check_training_state(ck: dict, path: str | Path, *, arg: str = "checkpoint_path") -> None:
    """ValueError naming ``arg`` when ``ck`` holds weights only (no optimiser, progress, RNG...)."""
    missing = [k for k in TRAINING_KEYS if k not in ck]
    if missing:
        raise ValueError(f"{arg}: {str(path)!r} holds no training state to resume (missing {missing}); "
                         f"use init_from to start a new run from its weights")


def load_model(path: str | Path, map_location: str | torch.device = "cpu", *,
               max_seq_len: int | None = None) -> TransformerLM:
    """The :class:`TransformerLM` stored at ``path``, rebuilt from the checkpoint's own ``model_config``, in
    eval mode on ``map_location``. ``max_seq_len`` overrides the stored context length (the RoPE tables are
    recomputed, no weight depends on it), e.g. to inspect a model on longer sequences than it was trained on.
    ValueError naming ``path`` when the weights do not fit the stored config."""
    return model_from_checkpoint(load_checkpoint(path, map_location), max_seq_len=max_seq_len).to(map_location)


def model_from_checkpoint(ck: dict, *, max_seq_len: int | None = None, arg: str = "path") -> TransformerLM:
    """:func:`load_model` for a dict already read by :func:`load_checkpoint` (on the tensors' device)."""
    mc = dict(ck["model_config"])
    if max_seq_len is not None:
        mc["max_seq_len"] = max_seq_len
    try:
        model = TransformerLM(ModelConfig(**mc))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{arg}: the checkpoint has an unusable model_config: {e}") from e
    load_weights(model, ck["state_dict"], arg=arg, allow_new_indexer=False)
    return model.eval()


def load_weights(model: TransformerLM, state_dict: dict[str, torch.Tensor], *, arg: str,
                 allow_new_indexer: bool = True) -> dict[str, Any]:
    """Copies ``state_dict`` into ``model``. ValueError naming ``arg`` on any missing, unexpected or
    differently shaped tensor, except (``allow_new_indexer``) indexer weights: a dense checkpoint loaded
    into a DSA model leaves the model's (seeded) indexer as it is, a DSA checkpoint loaded into a dense model
    drops its indexer. Returns {"indexer": "loaded" | "new" | "dropped" | None}."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if allow_new_indexer:
        bad_missing = [k for k in missing if ".indexer." not in k]
        bad_unexpected = [k for k in unexpected if ".indexer." not in k]
    else:
        bad_missing, bad_unexpected = missing, unexpected
    if shapes or bad_missing or bad_unexpected:
        parts = [f"shape mismatch in {', '.join(shapes[:4])}" if shapes else "",
                 f"missing {bad_missing[:4]}" if bad_missing else "",
                 f"unexpected {bad_unexpected[:4]}" if bad_unexpected else ""]
        raise ValueError(f"{arg}: the checkpoint's weights do not fit this model (another config?): "
                         + "; ".join(p for p in parts if p))
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    has_idx = any(".indexer." in k for k in own)
    if not has_idx:
        return {"indexer": "dropped" if unexpected else None}
    return {"indexer": "new" if missing else "loaded"}


def rng_state(device: torch.device) -> dict[str, Any]:
    """The generator states a training step could draw from (plain containers: ``weights_only`` loads them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": (kind, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(gauss))}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restores what :func:`rng_state` saved (the CUDA state only on a CUDA device)."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy(), pos, has_gauss, gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _tuples(x: Any) -> Any:
    """random.setstate wants tuples where a round trip may have given lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
