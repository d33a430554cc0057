"""Synthetic tasks whose relevant tokens are known, to score the indexer's selection against ground truth.

Two tasks, both as next-token prediction (``y`` is ``x`` shifted by one) with a ``loss_mask`` that keeps
only the positions where an answer is predicted:

* associative recall (:func:`make_recall_batch`): ``k1 v1 k2 v2 ... kn vn`` at the start, then noise with
  ``n_queries`` queries ``k_j`` placed later; the target after a query ``k_j`` is ``v_j``. Relevant
  positions of a query: the earlier ``k_j`` (to find the pair) and ``v_j`` (the answer to copy).
* needle retrieval (:func:`make_needle_batch`): a single needle token (a value token, unique in the
  sequence) exactly ``distance`` positions before a QUERY token; the target after QUERY is the needle.
  Relevant position: the needle.

Vocabulary layout (disjoint ranges, so a query is unambiguous and noise never looks like an answer)::

    0                      QUERY marker (needle task)
    [1, 1 + n_keys)        keys
    [.., .. + n_values)    values (needles are values)
    [.., vocab_size)       noise / filler

Shapes: x, y, loss_mask (B, L); query_pos (B, Q); relevant_pos (B, Q, R) with -1 padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dsa.checks import check_positive_int

QUERY_TOKEN = 0
MIN_VOCAB_SIZE = 8


@dataclass
class SyntheticConfig:
    """Settings of both tasks (each task reads the fields it needs).

    vocab_size: total ids; split into QUERY, keys, values, noise (see module docstring)
    seq_len:    L, length of x and y
    distance:   needle task: positions between the needle and the query (1 <= distance < L);
                None = L // 2
    n_pairs:    recall task: key/value pairs at the start of each sequence
    n_queries:  recall task: queries per sequence (distinct keys, n_queries <= n_pairs)
    """

    vocab_size: int = 64
    seq_len: int = 256
    distance: int | None = None
    n_pairs: int = 8
    n_queries: int = 1

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "n_pairs", "n_queries"):
            check_positive_int(name, getattr(self, name))
        if self.vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be >= {MIN_VOCAB_SIZE}, got {self.vocab_size}")
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {self.seq_len}")
        if self.distance is not None:
            check_positive_int("distance", self.distance)
            # The needle must sit inside the sequence before the query: query_pos - distance >= 0 with
            # query_pos <= L - 1.
            if self.distance >= self.seq_len:
                raise ValueError(f"distance must be < seq_len={self.seq_len}, got {self.distance}")
        if self.n_queries > self.n_pairs:
            raise ValueError(f"n_queries must be <= n_pairs={self.n_pairs}, got {self.n_queries}")

    # Vocabulary ranges: a quarter each for keys and values, the rest (about half) noise.
    @property
    def n_keys(self) -> int:
        return (self.vocab_size - 1) // 4

    @property
    def n_values(self) -> int:
        return (self.vocab_size - 1) // 4

    @property
    def key_lo(self) -> int:
        return 1

    @property
    def value_lo(self) -> int:
        return 1 + self.n_keys

    @property
    def noise_lo(self) -> int:
        return 1 + self.n_keys + self.n_values

    @property
    def needle_distance(self) -> int:
        return self.distance if self.distance is not None else self.seq_len // 2


@dataclass
class SyntheticBatch:
    """One batch of a synthetic task.

    x:            (B, L) int64 inputs
    y:            (B, L) int64 next-token targets (y[:, t] = x[:, t+1]; y[:, -1] is the token after x)
    loss_mask:    (B, L) bool, True only where an answer is predicted (at the query positions)
    query_pos:    (B, Q) int64, positions t whose target y[:, t] is the answer
    relevant_pos: (B, Q, R) int64, positions the query at query_pos must see; -1 pads unused slots
    """

    x: torch.Tensor
    y: torch.Tensor
    loss_mask: torch.Tensor
    query_pos: torch.Tensor
    relevant_pos: torch.Tensor

    def to(self, device: torch.device | str) -> SyntheticBatch:
        return SyntheticBatch(*(t.to(device) for t in (self.x, self.y, self.loss_mask, self.query_pos,
                                                        self.relevant_pos)))


def _noise(cfg: SyntheticConfig, batch_size: int, length: int, g: torch.Generator | None) -> torch.Tensor:
    return torch.randint(cfg.noise_lo, cfg.vocab_size, (batch_size, length), generator=g, dtype=torch.long)


def _first_k_of_permutation(batch_size: int, n: int, k: int, g: torch.Generator | None) -> torch.Tensor:
    """(B, k) distinct indices in [0, n) per row, uniformly (argsort of uniform noise = random permutation)."""
    return torch.rand(batch_size, n, generator=g).argsort(dim=-1)[:, :k]


def make_needle_batch(
    cfg: SyntheticConfig,
    batch_size: int,
    generator: torch.Generator | None = None,
    query_pos: int | None = None,
) -> SyntheticBatch:
    """Needle retrieval at exactly ``cfg.needle_distance``.

    Each row: noise, a needle value token at ``q - distance``, the QUERY token at ``q``, the needle again
    as the target of ``q``. ``query_pos`` fixes q for all rows (needs distance <= q <= L-1); None draws
    q uniformly from [distance, L-1] per row. Q = R = 1.
    """
    check_positive_int("batch_size", batch_size)
    d, length = cfg.needle_distance, cfg.seq_len
    if d >= length:  # only reachable via distance=None on a tiny L; kept so the error always names it
        raise ValueError(f"distance must be < seq_len={length}, got {d}")
    if query_pos is not None:
        if isinstance(query_pos, bool) or not isinstance(query_pos, int) or not d <= query_pos <= length - 1:
            raise ValueError(f"query_pos must be an int in [distance={d}, seq_len-1={length - 1}], got {query_pos!r}")
        q = torch.full((batch_size,), query_pos, dtype=torch.long)
    else:
        q = torch.randint(d, length, (batch_size,), generator=generator, dtype=torch.long)
    needle = torch.randint(cfg.value_lo, cfg.value_lo + cfg.n_values, (batch_size,), generator=generator)
    seq = _noise(cfg, batch_size, length + 1, generator)  # one extra token: the target of position L-1
    rows = torch.arange(batch_size)
    seq[rows, q - d] = needle
    seq[rows, q] = QUERY_TOKEN
    seq[rows, q + 1] = needle
    x, y = seq[:, :-1], seq[:, 1:]
    loss_mask = torch.zeros(batch_size, length, dtype=torch.bool)
    loss_mask[rows, q] = True
    return SyntheticBatch(x.contiguous(), y.contiguous(), loss_mask, q[:, None], (q - d)[:, None, None])


def make_recall_batch(
    cfg: SyntheticConfig, batch_size: int, generator: torch.Generator | None = None
) -> SyntheticBatch:
    """Associative recall (multi-query).

    Row layout: positions 0..2n-1 hold k_1 v_1 ... k_n v_n (distinct keys, values drawn with replacement);
    after them, ``n_queries`` queries k_j sit at random even-aligned slots among noise, each followed by
    its answer v_j. query_pos (B, Q) sorted ascending; relevant_pos (B, Q, 2) = [pos of k_j, pos of v_j].
    """
    check_positive_int("batch_size", batch_size)
    n, nq, length = cfg.n_pairs, cfg.n_queries, cfg.seq_len
    # Checked here, not in the config: a needle-task config with a small vocabulary need not fit n_pairs keys.
    if n > cfg.n_keys:
        raise ValueError(f"n_pairs must be <= the {cfg.n_keys} key tokens of vocab_size={cfg.vocab_size}, got {n}")
    # Query slots of two tokens (key, answer) start at 2n, 2n+2, ...; the answer of the last slot may be the
    # extra token at index L (the target of x[:, L-1]).
    n_slots = (length + 1 - 2 * n) // 2
    if n_slots < 1:
        raise ValueError(f"n_pairs must leave room for a query: 2*n_pairs + 2 <= seq_len + 1, got n_pairs={n} "
                         f"with seq_len={length}")
    if nq > n_slots:
        raise ValueError(f"n_queries must be <= {n_slots} (the query slots after {n} pairs in seq_len={length}), "
                         f"got {nq}")
    g = generator
    rows = torch.arange(batch_size)[:, None]
    keys = cfg.key_lo + _first_k_of_permutation(batch_size, cfg.n_keys, n, g)  # (B, n) distinct per row
    values = torch.randint(cfg.value_lo, cfg.value_lo + cfg.n_values, (batch_size, n), generator=g)
    asked = _first_k_of_permutation(batch_size, n, nq, g)  # (B, Q) which pair each query asks for
    slots = _first_k_of_permutation(batch_size, n_slots, nq, g).sort(dim=-1).values  # (B, Q) ascending
    q = 2 * n + 2 * slots  # (B, Q)

    seq = _noise(cfg, batch_size, length + 1, g)
    seq[:, 0 : 2 * n : 2] = keys
    seq[:, 1 : 2 * n : 2] = values
    seq[rows, q] = keys.gather(1, asked)
    seq[rows, q + 1] = values.gather(1, asked)
    x, y = seq[:, :-1], seq[:, 1:]
    loss_mask = torch.zeros(batch_size, length, dtype=torch.bool)
    loss_mask[rows, q] = True
    relevant = torch.stack([2 * asked, 2 * asked + 1], dim=-1)  # (B, Q, 2)
    return SyntheticBatch(x.contiguous(), y.contiguous(), loss_mask, q, relevant)


def selection_hits(indices: torch.Tensor, query_pos: torch.Tensor, relevant_pos: torch.Tensor) -> torch.Tensor:
    """(B, Q, R) bool: whether relevant_pos[b, q, r] is among indices[b, query_pos[b, q], :].

    indices:      (B, L, K) int64 selected key positions per query position, -1 in unused slots
    query_pos:    (B, Q) or (B,) int64 positions in [0, L)
    relevant_pos: (B, Q, R) or (B, R) int64 (matching query_pos), -1 pads (padded entries give False)
    """
    if indices.ndim != 3:
        raise ValueError(f"indices must be (B, L, K), got shape {tuple(indices.shape)}")
    if query_pos.ndim == 1:
        query_pos = query_pos[:, None]
        if relevant_pos.ndim == 2:
            relevant_pos = relevant_pos[:, None, :]
    if query_pos.ndim != 2 or query_pos.shape[0] != indices.shape[0]:
        raise ValueError(f"query_pos must be (B, Q) with B={indices.shape[0]}, got shape {tuple(query_pos.shape)}")
    if relevant_pos.ndim != 3 or tuple(relevant_pos.shape[:2]) != tuple(query_pos.shape):
        raise ValueError(f"relevant_pos must be (B, Q, R) with (B, Q)={tuple(query_pos.shape)}, "
                         f"got shape {tuple(relevant_pos.shape)}")
    b, length, k = indices.shape
    if query_pos.numel() and (int(query_pos.min()) < 0 or int(query_pos.max()) >= length):
        raise ValueError(f"query_pos must lie in [0, L={length}), got values in "
                         f"[{int(query_pos.min())}, {int(query_pos.max())}]")
    query_pos = query_pos.to(indices.device, torch.long)
    relevant_pos = relevant_pos.to(indices.device, torch.long)
    sel = indices.gather(1, query_pos[..., None].expand(-1, -1, k))  # (B, Q, K)
    hit = (relevant_pos[..., :, None] == sel[..., None, :]).any(dim=-1)  # (B, Q, R)
    # -1 never counts as a hit, even if a padded relevant slot meets an unused (-1) index slot.
    return hit & (relevant_pos >= 0)


def selection_hit_rate(indices: torch.Tensor, query_pos: torch.Tensor, relevant_pos: torch.Tensor) -> float:
    """Share of (query, relevant position) pairs whose relevant position is among the query's selection.

    Shapes as in :func:`selection_hits`; pairs padded with -1 in relevant_pos are not counted.
    """
    hits = selection_hits(indices, query_pos, relevant_pos)
    n = int((relevant_pos >= 0).sum())
    if n == 0:
        raise ValueError("relevant_pos holds no position (all -1): the hit rate is undefined")
    return int(hits.sum()) / n


# ------------------------------------------------------------------ training and evaluation streams
IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index: targets outside loss_mask carry it
TASKS = ("recall", "needle")


def make_task_batch(task: str, cfg: SyntheticConfig, batch_size: int,
                    generator: torch.Generator | None = None) -> SyntheticBatch:
    """One batch of ``task`` ('recall' or 'needle'); see :func:`make_recall_batch` / :func:`make_needle_batch`."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return (make_recall_batch if task == "recall" else make_needle_batch)(cfg, batch_size, generator)


def masked_targets(batch: SyntheticBatch) -> torch.Tensor:
    """(B, L) int64: y where loss_mask, IGNORE_INDEX elsewhere, so a plain cross-entropy scores the answers only
    (the noise between them is unpredictable by construction and would swamp the answers' few positions)."""
    return batch.y.masked_fill(~batch.loss_mask, IGNORE_INDEX)


class SyntheticSampler:
    """Deterministic training batches of a synthetic task, the same interface as ``dsa.text.batches.BatchSampler``:
    ``batch(step)`` -> (x (B, L), y (B, L) with IGNORE_INDEX outside the answers), a function of (seed, step) only,
    so every arm of an experiment sees the same batch at the same step."""

    def __init__(self, task: str, cfg: SyntheticConfig, batch_size: int, seed: int,
                 distances: tuple[int, ...] | None = None) -> None:
        """distances: needle task only: step i uses distances[i % len(distances)] (a model trained at one
        distance learns that offset, not retrieval); None = cfg.needle_distance at every step."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        check_positive_int("batch_size", batch_size)
        if distances is not None:
            if task != "needle" or not distances:
                raise ValueError(f"distances must be a non-empty tuple and only for task='needle', got {distances!r}")
            for d in distances:  # SyntheticConfig checks each: 1 <= d < seq_len
                SyntheticConfig(vocab_size=cfg.vocab_size, seq_len=cfg.seq_len, distance=d)
        self.task, self.cfg, self.batch_size, self.seed = task, cfg, batch_size, seed
        self.distances = tuple(distances) if distances is not None else None

    def config_at(self, step: int) -> SyntheticConfig:
        if self.distances is None:
            return self.cfg
        from dataclasses import replace  # noqa: PLC0415

        return replace(self.cfg, distance=self.distances[step % len(self.distances)])

    def full_batch(self, step: int) -> SyntheticBatch:
        from dsa.text.batches import step_seed  # noqa: PLC0415

        g = torch.Generator().manual_seed(step_seed(self.seed, step))
        return make_task_batch(self.task, self.config_at(step), self.batch_size, g)

    def batch(self, step: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.full_batch(step)
        x, y = b.x, masked_targets(b)
        return (x, y) if device is None else (x.to(device), y.to(device))


def cut_relevant(batch: SyntheticBatch, cfg: SyntheticConfig,
                 generator: torch.Generator | None = None) -> SyntheticBatch:
    """The same batch with every relevant position (relevant_pos >= 0) overwritten by fresh noise: the far
    information a query needs is gone, everything else (queries, answers as targets, positions) stays.
    A model that still answers above chance on it does not need the far tokens."""
    x = batch.x.clone()
    b_idx = torch.arange(x.shape[0])[:, None, None].expand_as(batch.relevant_pos)
    ok = batch.relevant_pos >= 0
    rows, pos = b_idx[ok], batch.relevant_pos[ok]
    x[rows, pos] = torch.randint(cfg.noise_lo, cfg.vocab_size, (int(ok.sum()),), generator=generator)
    return SyntheticBatch(x, batch.y, batch.loss_mask, batch.query_pos, batch.relevant_pos)
