"""Training: dense, DSA as DeepSeek-V3.2 trains it, and sparse-from-scratch as the seeds did.

DSA recipe ``deepseek`` (phases in order):
  1. ``dense``  - the LM trained with dense attention (stands in for the dense checkpoint DeepSeek starts
                  from); the indexer is untouched.
  2. ``warmup`` - dense warm-up: the main model frozen, only the indexer trained on
                  KL(p_attn || softmax(I)); these steps use a separate data stream and are not LM steps.
  3. ``sparse`` - sparse training: everything trained; LM loss over sparse attention, the indexer by the
                  KL restricted to the selected set, its input detached from the LM graph.
Recipe ``scratch``: sparse attention from step 0 and, by default, no indexer loss - the seeds' setup, in
which the indexer receives no gradient at all (top-k is not differentiable) and stays at its random init.

Fairness: the LM sees batch ``i`` at LM step ``i`` in every run with one ``data_seed``; the main weights
start identical for one ``seed`` whatever the attention; the LR schedule runs over the LM steps only.

Continued training (``start_step`` > 0, ``init_from`` = the checkpoint a run wrote at that step): LM steps are
counted globally, so a run split in two (a dense base of N0 steps, then a continued run from its checkpoint)
reads batches N0, N0+1, ... and takes the LR of global steps N0, N0+1, ... of one schedule of
``schedule_steps`` (the base is told the whole length), and keeps AdamW's moments of every parameter the two
models share (a new indexer starts its own optimiser). DeepSeek's recipe as two runs then matches the
one-run recipe (dense phase, indexer warm-up, sparse phase) step for step, and a continued arm differs from
a from-scratch arm of N0 + N steps only in its attention: restarting warm-up and cosine with fresh moments
would hand the continued arms a second schedule, a confound the long-context pilot ran into.

Command line (``dsa.train.cli``): python -m dsa train --attention dense|dsa --seq-len 256 --top-k 128 --steps 1000 ...
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dsa.checks import check_int, check_number, check_out_file, resolve_device
from dsa.layers.config import K_POLICIES
from dsa.model.config import ATTENTION_KINDS, ModelConfig
from dsa.model.lm import TransformerLM
from dsa.ops.dispatch import IMPLS, impl_on_device, interpret_mode, triton_installed
from dsa.provenance import REPO_ROOT, provenance, write_json_atomic
from dsa.text.corpus import CORPUS_NAMES, check_source
from dsa.text.tokenizer import MIN_BPE_VOCAB_SIZE, TOKENIZER_KINDS
from dsa.train import checkpoints as ckpt
from dsa.train import distributed as ddp_util

RECIPES = ("deepseek", "scratch")
PRECISIONS = ("auto", "bf16", "fp32")


def _names_a_device(name: str) -> bool:
    try:
        torch.device(name)
    except RuntimeError:
        return False
    return True


@dataclass
class TrainConfig:
    """One training run. Each field is a flag of ``python -m dsa train`` (its metadata: help, choices);
    every value is checked here, at construction, before any data loads."""

    attention: str = field(default="dense", metadata={
        "help": "attention of every layer: dense (causal SDPA) or dsa (indexer + top-k + sparse attention)",
        "choices": ATTENTION_KINDS})
    recipe: str = field(default="deepseek", metadata={
        "help": "DSA training recipe: deepseek (dense -> indexer warm-up -> sparse) or scratch (sparse from "
                "step 0, the seeds' setup)", "choices": RECIPES})
    seq_len: int = field(default=128, metadata={"help": "sequence length L, tokens", "metavar": "L"})
    top_k: int = field(default=64, metadata={
        "help": "keys each query attends to under DSA, 1..seq_len (the cap of an adaptive k_policy)",
        "metavar": "K"})
    k_policy: str = field(default="fixed", metadata={
        "help": "per-query k (dsa.ops.adaptive): fixed k, or the smallest k reaching k_mass of the indexer's "
                "softmax (mass), or from its entropy (entropy); capped at top_k", "choices": K_POLICIES})
    k_mass: float = field(default=0.9, metadata={
        "help": "target indexer softmax mass of k_policy=mass, in (0, 1]", "metavar": "P"})
    batch_size: int = field(default=8, metadata={"help": "sequences per step (per rank under torchrun)",
                                                 "metavar": "B"})
    steps: int = field(default=100, metadata={"help": "LM-training steps, identical for dense and DSA runs",
                                              "metavar": "N"})
    dense_steps: int | None = field(default=None, metadata={
        "help": "deepseek recipe: dense LM steps before sparse training, 0..steps (default steps // 4)",
        "metavar": "N"})
    warmup_steps: int | None = field(default=None, metadata={
        "help": "deepseek recipe: extra indexer-only warm-up steps on the KL loss (default max(steps // 10, 1))",
        "metavar": "N"})
    indexer_kl: bool | None = field(default=None, metadata={
        "help": "train the indexer by its KL loss during sparse training, DSA only (default: on for deepseek, "
                "off for scratch)"})
    leak_future: bool = field(default=False, metadata={
        "help": "DSA only: let the selection pick future tokens (the seeds' bug, reproduced on purpose)"})
    data: str = field(default="shakespeare", metadata={
        "help": f"corpus: one of {', '.join(CORPUS_NAMES)}, or file:<path> (a UTF-8 text file)",
        "metavar": "NAME"})
    tokenizer: str = field(default="bpe", metadata={
        "help": "byte-level BPE trained on the train split, or raw UTF-8 bytes", "choices": TOKENIZER_KINDS})
    vocab_size: int = field(default=2048, metadata={
        "help": f"BPE vocabulary size, >= {MIN_BPE_VOCAB_SIZE} (256 bytes + EOT + merges; ignored by the byte "
                "tokenizer)", "metavar": "V"})
    d_model: int = field(default=128, metadata={"help": "hidden size"})
    n_layers: int = field(default=2, metadata={"help": "transformer blocks"})
    n_heads: int = field(default=4, metadata={"help": "query heads; d_model must be a multiple unless head_dim "
                                                      "is given"})
    n_kv_heads: int | None = field(default=None, metadata={
        "help": "K/V heads, a divisor of n_heads: fewer = GQA, 1 = MQA (default n_heads: MHA)"})
    head_dim: int | None = field(default=None, metadata={
        "help": "per-head query/key/value size, even (RoPE) (default d_model / n_heads)"})
    indexer_heads: int = field(default=4, metadata={"help": "lightning-indexer heads"})
    indexer_dim: int = field(default=32, metadata={"help": "lightning-indexer head size"})
    indexer_rope_dim: int = field(default=16, metadata={
        "help": "dims of each indexer head that carry RoPE, even and <= indexer_dim"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate of the main model (AdamW), > 0"})
    min_lr_ratio: float = field(default=0.1, metadata={
        "help": "cosine decay ends at this fraction of lr, in [0, 1]"})
    lr_warmup_steps: int = field(default=20, metadata={"help": "linear LR warm-up, LM steps (>= 0)",
                                                       "metavar": "N"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay of the matrices, >= 0"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clip, > 0"})
    indexer_lr: float = field(default=1e-3, metadata={"help": "learning rate of the indexer (AdamW), > 0"})
    eval_every: int = field(default=50, metadata={
        "help": "evaluate every N iterations (and at the end of each phase)", "metavar": "N"})
    eval_batches: int = field(default=4, metadata={"help": "validation batches per evaluation", "metavar": "N"})
    seed: int = field(default=0, metadata={"help": "weights seed (>= 0): same seed, same initial weights "
                                                   "whatever the attention"})
    data_seed: int = field(default=0, metadata={"help": "batch-order seed (>= 0): same seed, same batches"})
    device: str = field(default="auto", metadata={
        "help": "auto (CUDA when available, else CPU), cpu, cuda or cuda:N", "metavar": "DEVICE"})
    precision: str = field(default="auto", metadata={
        "help": "auto = bf16 autocast on CUDA, fp32 on CPU; bf16 needs CUDA", "choices": PRECISIONS})
    impl: str = field(default="auto", metadata={
        "help": "every attention op: auto (Triton on CUDA, else the reference), reference, or triton (CUDA, "
                "or TRITON_INTERPRET=1)", "choices": IMPLS})
    out: str | None = field(default=None, metadata={
        "help": "run JSON path (default runs/<name>.json; '' writes none)", "metavar": "PATH"})
    name: str | None = field(default=None, metadata={
        "help": "run name (default from attention, recipe, L, k and seed)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    checkpoint_every: int = field(default=0, metadata={
        "help": "write a checkpoint every N iterations (LM and warm-up steps) and at the end; 0 = only at the "
                "end (checkpoints need a path: checkpoint_path, or the run JSON's, see --out)"})
    checkpoint_path: str | None = field(default=None, metadata={
        "help": "checkpoint file (default: beside the run JSON, runs/<name>.ckpt.pt; none when --out '')"})
    resume: bool = field(default=False, metadata={
        "help": "continue from checkpoint_path if it exists (same result as an uninterrupted run); "
                "start from step 0 with a message if it does not"})
    init_from: str | None = field(default=None, metadata={
        "help": "initialise the model's weights from this checkpoint; a dense checkpoint into a DSA run keeps "
                "the new indexer's seeded init. With start_step 0: fresh optimisers, a schedule of its own; "
                "with start_step > 0: a training checkpoint written at that step, whose run this one continues"})
    start_step: int = field(default=0, metadata={
        "help": "global LM step this run starts at (>= 0): its place on the LR schedule and the index of its "
                "first batch; > 0 continues the run whose checkpoint init_from names (it must be at this "
                "step; its optimiser moments are kept for the parameters both models have)", "metavar": "N"})
    schedule_steps: int | None = field(default=None, metadata={
        "help": "length of the LR schedule (warm-up, then cosine) in global LM steps, >= start_step + steps "
                "(default start_step + steps; a run that others continue is given the whole length)",
        "metavar": "N"})

    design: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "the design factors of the run, recorded by the experiment that built it (dsa.train.experiments: "
                "experiment, arm, designed k/L ratio and k rule, ablation and level); not part of the sweep key",
        "cli": False})

    def __post_init__(self) -> None:
        self._check_values()
        if not isinstance(self.design, dict):
            raise TypeError(f"design must be a dict of design factors, got {type(self.design).__name__}")
        is_ds = self.recipe == "deepseek" and self.attention == "dsa"
        if self.dense_steps is None:
            self.dense_steps = self.steps // 4 if is_ds else 0
        if self.warmup_steps is None:
            self.warmup_steps = max(self.steps // 10, 1) if is_ds else 0
        if self.indexer_kl is None:
            self.indexer_kl = is_ds
        check_int("dense_steps", self.dense_steps, 0)
        check_int("warmup_steps", self.warmup_steps, 0)
        if not 0 <= self.dense_steps <= self.steps:
            raise ValueError(f"dense_steps must be in [0, steps={self.steps}], got {self.dense_steps}")
        if self.attention == "dense" and (self.dense_steps not in (0, self.steps) or self.warmup_steps):
            raise ValueError("dense_steps / warmup_steps only apply to attention='dsa'")
        if self.attention == "dense" and self.indexer_kl:
            raise ValueError("indexer_kl only applies to attention='dsa'")
        if self.warmup_steps and not self.indexer_kl:
            raise ValueError("warmup_steps > 0 trains the indexer by its KL loss: it needs indexer_kl")
        self._check_checkpoint_fields()

    def _check_checkpoint_fields(self) -> None:
        v = self.checkpoint_every
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"checkpoint_every must be an int >= 0, got {v!r}")
        for name in ("checkpoint_path", "init_from"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v):
                raise ValueError(f"{name} must be a non-empty path or None, got {v!r}")
        if self.init_from is not None and not Path(self.init_from).is_file():
            raise ValueError(f"init_from: no checkpoint file at {self.init_from!r}")
        if not isinstance(self.resume, bool):
            raise ValueError(f"resume must be a bool, got {self.resume!r}")
        if self.checkpoint_file() is None and (self.checkpoint_every or self.resume):
            what = "checkpoint_every" if self.checkpoint_every else "resume"
            raise ValueError(f"{what} needs a checkpoint file: set checkpoint_path (out='' writes no run JSON "
                             "to put one beside)")

    def checkpoint_file(self) -> Path | None:
        """Where checkpoints go: checkpoint_path, else beside the run JSON (``<out stem>.ckpt.pt``); None
        when neither is set (``out=''``, as sweeps and tests run)."""
        if self.checkpoint_path:
            return Path(self.checkpoint_path)
        out = self.json_path()
        return None if out is None else out.with_name(out.stem + ".ckpt.pt")

    def json_path(self) -> Path | None:
        """The run JSON: ``out``, by default runs/<name>.json; None for ``out=''`` (no JSON)."""
        if self.out == "":
            return None
        return Path(self.out) if self.out else REPO_ROOT / "runs" / f"{self.run_name()}.json"

    def _check_values(self) -> None:
        """Each value on its own, and the model it describes (heads, head sizes, RoPE dims, k, k policy)."""
        for name in ("attention", "recipe", "k_policy", "tokenizer", "precision", "impl"):
            choices = next(f for f in fields(self) if f.name == name).metadata["choices"]
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("seq_len", "batch_size", "steps", "eval_every", "eval_batches", "vocab_size"):
            check_int(name, getattr(self, name), 1)
        for name in ("lr_warmup_steps", "seed", "data_seed", "start_step"):
            check_int(name, getattr(self, name), 0)
        if self.schedule_steps is not None:
            check_int("schedule_steps", self.schedule_steps, 1)
            if self.schedule_steps < self.start_step + self.steps:
                raise ValueError(f"schedule_steps ({self.schedule_steps}) must be >= start_step + steps "
                                 f"({self.start_step} + {self.steps}): a run may not outlast its LR schedule")
        check_int("top_k", self.top_k, 1)
        if self.top_k > self.seq_len:
            raise ValueError(f"top_k ({self.top_k}) must be <= seq_len ({self.seq_len})")
        for name in ("lr", "indexer_lr", "grad_clip"):
            check_number(name, getattr(self, name), low=0, low_open=True)
        check_number("min_lr_ratio", self.min_lr_ratio, low=0, high=1)
        check_number("weight_decay", self.weight_decay, low=0)
        check_source(self.data, self.tokenizer, self.vocab_size, arg="data", file_exists=False)
        check_out_file("out", self.out)
        if not isinstance(self.device, str) or (self.device != "auto" and not _names_a_device(self.device)):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        self.model_config(self.vocab_size)

    def check_runtime(self) -> None:
        """Whether this machine can run the config: a local data file is there, the device, bf16 autocast
        (CUDA only), Triton kernels. Called by :func:`train` and the CLI before any data loads; not at
        construction, where a recorded config (device='cuda:0') must still rebuild on another machine."""
        check_source(self.data, self.tokenizer, self.vocab_size, arg="data")  # FileNotFoundError naming data
        device = resolve_device(self.device)
        if self.precision == "bf16" and device.type != "cuda":
            raise ValueError(f"precision='bf16' autocast needs CUDA; device {self.device!r} is {device.type}")
        if self.impl == "triton" and self.attention == "dsa":
            if not triton_installed():
                raise ValueError("impl='triton' needs the triton package, which is not installed")
            if device.type != "cuda" and not interpret_mode():
                raise ValueError(f"impl='triton' needs a CUDA device (or TRITON_INTERPRET=1); device "
                                 f"{self.device!r} is {device.type}")

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab_size, d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads, max_seq_len=self.seq_len, attention=self.attention, top_k=self.top_k,
            k_policy=self.k_policy, k_mass=self.k_mass,
            indexer_heads=self.indexer_heads, indexer_dim=self.indexer_dim,
            indexer_rope_dim=self.indexer_rope_dim, leak_future=self.leak_future,
            head_dim=self.head_dim, impl=self.impl,
        )

    def phases(self) -> list[tuple[str, int]]:
        """[(phase, n_iterations)] in order; phases with no iterations are dropped."""
        if self.attention == "dense":
            return [("dense", self.steps)]
        plan = [("dense", self.dense_steps), ("warmup", self.warmup_steps), ("sparse", self.steps - self.dense_steps)]
        return [(p, n) for p, n in plan if n > 0]

    def schedule_length(self) -> int:
        """The LR schedule's length in global LM steps: ``schedule_steps``, else where this run ends."""
        return self.schedule_steps if self.schedule_steps is not None else self.start_step + self.steps

    def run_name(self) -> str:
        if self.name:
            return self.name
        att = (self.attention if self.attention == "dense"
               else f"dsa-{self.recipe}" + ("-leaky" if self.leak_future else ""))
        return f"{att}-L{self.seq_len}-k{self.top_k}-s{self.seed}"


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The LR of global LM step ``step``: linear warm-up, then cosine decay to min_lr_ratio * lr at
    ``cfg.schedule_length()`` (a function of the global step alone: every run of one schedule agrees on it)."""
    if step < cfg.lr_warmup_steps:
        return cfg.lr * (step + 1) / cfg.lr_warmup_steps
    span = max(cfg.schedule_length() - cfg.lr_warmup_steps, 1)
    progress = min((step - cfg.lr_warmup_steps) / span, 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _load_data(cfg: TrainConfig):
    from dsa.text.batches import BatchSampler, eval_batches  # noqa: PLC0415
    from dsa.text.corpus import load_corpus  # noqa: PLC0415

    corpus = load_corpus(cfg.data, tokenizer=cfg.tokenizer, vocab_size=cfg.vocab_size)
    train = BatchSampler(corpus.train, cfg.seq_len, cfg.batch_size, seed=cfg.data_seed)
    warm = BatchSampler(corpus.train, cfg.seq_len, cfg.batch_size, seed=cfg.data_seed + 7919)
    val = eval_batches(corpus.val, cfg.seq_len, cfg.batch_size, cfg.eval_batches)
    return corpus, train, warm, val


def _leak_off(model: TransformerLM):
    """Temporarily evaluate a leaky model with the causal guard back on."""
    return model.selection_override(leak_future=False)


@torch.no_grad()
def evaluate(model: TransformerLM, batches, device, autocast, sparse: bool, recall: bool) -> dict:
    """Validation loss, next-token accuracy, perplexity (and indexer recall on the first batch)."""
    model.eval()
    tot_loss, tot_correct, tot_n = 0.0, 0, 0
    rec = None
    sel_k: dict = {}
    for i, (x, y) in enumerate(batches):
        x, y = x.to(device), y.to(device)
        with autocast():
            out = model(x, sparse=sparse, recall=recall and i == 0)
        # targets equal to -100 (F.cross_entropy's ignore_index: synthetic tasks score their answers only)
        # count neither in the loss nor in the accuracy
        tot_loss += float(F.cross_entropy(out.logits.flatten(0, 1), y.flatten(), reduction="sum"))
        scored = y != -100
        tot_correct += int(((out.logits.argmax(-1) == y) & scored).sum())
        tot_n += int(scored.sum())
        if out.recall is not None:
            rec = out.recall
        if sparse and i == 0:
            # keys each query attends to (an adaptive policy's average k; causal queries near the start
            # have fewer than k past tokens), per layer and as the mean over layers
            by_layer = [float((a.selection >= 0).sum(-1).float().mean()) for a in out.aux if a.selection is not None]
            if by_layer:
                sel_k = {"mean_k": sum(by_layer) / len(by_layer), "mean_k_by_layer": by_layer}
    model.train()
    if tot_n == 0:
        raise ValueError("evaluation batches hold no scored target (every target is -100)")
    loss = tot_loss / tot_n
    res = {"val_loss": loss, "val_acc": tot_correct / tot_n, "val_ppl": math.exp(min(loss, 50.0))}
    if rec is not None:
        res.update(rec)
    res.update(sel_k)
    return res


def _peak_memory_mb(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    return {"peak_mem_mb": None, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


@dataclass
class _Run:
    """What the steps of one run share (the former closures' variables): built by :func:`_setup`, advanced
    by the steps, written by :func:`_save` and restored by :func:`_restore`."""

    cfg: TrainConfig
    info: ddp_util.DistInfo
    device: torch.device
    use_bf16: bool
    model: TransformerLM
    mcfg: ModelConfig
    main_params: list[torch.nn.Parameter]
    idx_params: list[torch.nn.Parameter]
    main_opt: torch.optim.Optimizer
    idx_opt: torch.optim.Optimizer | None
    train_s: Any
    warm_s: Any
    val: list
    meta: dict
    phases: list[tuple[str, int]]
    ckpt_path: Path | None
    init: dict | None = None  # what init_from loaded
    resumed: dict | None = None  # where a resumed run picked up
    history: list[dict] = field(default_factory=list)
    step_times: dict[str, list[float]] = field(default_factory=dict)
    window: list[float] = field(default_factory=list)
    it: int = 0  # iterations done, LM and warm-up
    lm_step: int = 0  # global LM step (start_step + LM steps done): the LR's position, the next LM batch's index
    bar: Any = None
    t_start: float = 0.0

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.use_bf16 else contextlib.nullcontext()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def total_iters(self) -> int:
        return sum(n for _, n in self.phases)


def _device(cfg: TrainConfig, info: ddp_util.DistInfo) -> tuple[torch.device, bool]:
    """The device of this rank and whether to autocast to bf16."""
    device = resolve_device(cfg.device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if use_bf16 and device.type != "cuda":
        raise ValueError("precision='bf16' autocast is only used on CUDA here")
    return device, use_bf16


def _optimisers(model: TransformerLM, cfg: TrainConfig):
    """AdamW for the main weights (no decay on gains) and, for DSA, a separate one for the indexer."""
    main_params = model.main_parameters()
    decay = [p for p in main_params if p.ndim >= 2]
    no_decay = [p for p in main_params if p.ndim < 2]
    main_opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    idx_params = model.indexer_parameters()
    idx_opt = torch.optim.AdamW(idx_params, lr=cfg.indexer_lr, weight_decay=0.0) if idx_params else None
    return main_params, idx_params, main_opt, idx_opt


def _setup(cfg: TrainConfig, info: ddp_util.DistInfo, data, init_ck: dict | None) -> _Run:
    """Device, data, model (seeded, or its weights from ``init_ck``), optimisers and autocast."""
    device, use_bf16 = _device(cfg, info)
    torch.manual_seed(cfg.seed)
    if data is None:
        corpus, train_s, warm_s, val = ddp_util.rank_zero_first(info, lambda: _load_data(cfg))
        vocab, meta = corpus.vocab_size, corpus.meta
    else:
        vocab, train_s, warm_s, val, meta = data
    mcfg = cfg.model_config(vocab)
    model = TransformerLM(mcfg, seed=cfg.seed)
    init = None
    if init_ck is not None:
        init = {"path": cfg.init_from, **ckpt.load_weights(model, init_ck["state_dict"], arg="init_from")}
    model = model.to(device)
    main_params, idx_params, main_opt, idx_opt = _optimisers(model, cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    phases = cfg.phases()
    return _Run(cfg=cfg, info=info, device=device, use_bf16=use_bf16, model=model, mcfg=mcfg,
                main_params=main_params, idx_params=idx_params, main_opt=main_opt, idx_opt=idx_opt,
                train_s=train_s, warm_s=warm_s, val=val, meta=meta, phases=phases, ckpt_path=cfg.checkpoint_file(),
                init=init, step_times={p: [] for p, _ in phases}, lm_step=cfg.start_step)


def _warmup_step(run: _Run, x: torch.Tensor) -> float:
    """One indexer-only step: KL(dense attention || indexer) with the main model frozen. x: (B, L) tokens."""
    with run.autocast():
        out = run.model(x, sparse=False, indexer_loss="dense")
    loss = out.indexer_kl
    run.idx_opt.zero_grad(set_to_none=True)
    loss.backward()
    ddp_util.all_reduce_grads(run.idx_params, run.info)
    torch.nn.utils.clip_grad_norm_(run.idx_params, run.cfg.grad_clip)
    run.idx_opt.step()
    return float(loss.detach())


def _lm_step(run: _Run, fwd: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, phase: str) -> float:
    """One LM step, dense or sparse (then the indexer too, by its KL on the selected set when configured).
    x, y: (B, L) tokens and next tokens. Returns the LM loss."""
    cfg = run.cfg
    il = "sparse" if phase == "sparse" and cfg.indexer_kl else None
    with run.autocast():
        out = fwd(x, sparse=phase == "sparse", indexer_loss=il)
    lm = F.cross_entropy(out.logits.flatten(0, 1), y.flatten())
    total = lm + out.indexer_kl if il else lm
    run.main_opt.zero_grad(set_to_none=True)
    if run.idx_opt is not None:
        run.idx_opt.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(run.main_params, cfg.grad_clip)
    for g in run.main_opt.param_groups:
        g["lr"] = lr_at(run.lm_step, cfg)
    run.main_opt.step()
    if il:
        torch.nn.utils.clip_grad_norm_(run.idx_params, cfg.grad_clip)
        run.idx_opt.step()
    run.lm_step += 1
    return float(lm.detach())


def _log_eval(run: _Run, phase: str, train_loss: float | None) -> None:
    """Evaluates (with the causal guard back on too, for a leaky sparse model) and appends a history entry."""
    cfg, model = run.cfg, run.model
    sparse = phase == "sparse"
    entry = {"iter": run.it, "lm_step": run.lm_step, "phase": phase, "train_loss": train_loss}
    entry.update(evaluate(model, run.val, run.device, run.autocast, sparse=sparse, recall=cfg.attention == "dsa"))
    if cfg.leak_future and sparse:
        with _leak_off(model):
            causal = evaluate(model, run.val, run.device, run.autocast, sparse=True, recall=False)
        entry["val_loss_causal_eval"] = causal["val_loss"]
        entry["val_acc_causal_eval"] = causal["val_acc"]
    if run.window:
        mean_t = sum(run.window) / len(run.window)
        entry["time_per_step_s"] = mean_t
        entry["tokens_per_s"] = run.info.world * cfg.batch_size * cfg.seq_len / mean_t
        run.window.clear()
    entry.update(_peak_memory_mb(run.device))
    run.history.append(entry)
    run.bar.set_postfix(phase=phase, val_loss=f"{entry['val_loss']:.3f}")


def _run_phase(run: _Run, phase: str, first: int, n: int) -> None:
    """Iterations ``first .. n-1`` of one phase (``first`` > 0 when resuming inside it)."""
    cfg, info = run.cfg, run.info
    warm = phase == "warmup"
    for p in run.main_params:
        p.requires_grad_(not warm)
    fwd = run.model if warm else ddp_util.wrap(run.model, info, run.device)
    for j in range(first, n):
        # under torchrun each rank takes its own slice of the same deterministic batch stream
        b_i = (j if warm else run.lm_step) * info.world + info.rank
        x, y = (run.warm_s if warm else run.train_s).batch(b_i)
        x, y = x.to(run.device), y.to(run.device)
        run.sync()
        t0 = time.perf_counter()
        train_loss = _warmup_step(run, x) if warm else _lm_step(run, fwd, x, y, phase)
        run.sync()
        dt = time.perf_counter() - t0
        run.window.append(dt)
        run.step_times[phase].append(dt)
        run.it += 1
        run.bar.update(1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"non-finite loss {train_loss} at iteration {run.it} ({phase})")
        if run.it % cfg.eval_every == 0 or j == n - 1:
            _log_eval(run, phase, train_loss)
        if cfg.checkpoint_every and run.it % cfg.checkpoint_every == 0 and run.it < run.total_iters:
            _checkpoint(run, phase)
    if fwd is not run.model:  # drop this phase's DDP wrapper (and its gradient hooks) before requires_grad changes
        fwd = None
        ddp_util.release_wrappers()


def _train_phases(run: _Run) -> None:
    """Runs what is left of the phase plan (all of it unless resumed)."""
    done = 0
    for phase, n in run.phases:
        first = min(max(run.it - done, 0), n)
        done += n
        if first < n:
            _run_phase(run, phase, first, n)
    for p in run.main_params:
        p.requires_grad_(True)


def _phase_at(run: _Run, it: int) -> tuple[str, int, int]:
    """(phase of iteration ``it`` - 1, the global LM step and the warm-up steps done after ``it`` iterations)."""
    done, lm, warm, phase = 0, run.cfg.start_step, 0, run.phases[0][0]
    for p, n in run.phases:
        k = min(max(it - done, 0), n)
        if p == "warmup":
            warm += k
        else:
            lm += k
        if k:
            phase = p
        done += n
    return phase, lm, warm


def _state(run: _Run, phase: str) -> dict:
    """The checkpoint of this moment (format in :mod:`dsa.train.checkpoints`)."""
    cfg = run.cfg
    return {
        "config": asdict(cfg), "model_config": run.mcfg.to_dict(), "state_dict": run.model.state_dict(),
        "optimizers": {"main": run.main_opt.state_dict(),
                       "indexer": run.idx_opt.state_dict() if run.idx_opt is not None else None},
        "progress": {"it": run.it, "lm_step": run.lm_step, "phase": phase,
                     "lr": lr_at(max(run.lm_step - 1, 0), cfg)},
        "data": _data_position(run),
        "rng": ckpt.rng_state(run.device),
        "history": run.history, "step_times": run.step_times, "phases": run.phases,
        # as JSON has it: plain types that torch.load(weights_only=True) reads (torch's version is a str subclass)
        "init_from": run.init, "provenance": json.loads(json.dumps(provenance(run.device), default=str)),
    }


def _data_position(run: _Run) -> dict:
    """The samplers' state: their seeds and the index of the next batch each reads (rank r adds r)."""
    _, lm, warm = _phase_at(run, run.it)
    world = run.info.world
    return {"data_seed": run.cfg.data_seed, "train_seed": getattr(run.train_s, "seed", None),
            "warm_seed": getattr(run.warm_s, "seed", None), "world_size": world,
            "next_train_batch": lm * world, "next_warm_batch": warm * world}


def _checkpoint(run: _Run, phase: str) -> None:
    """Rank 0 writes the checkpoint; every rank waits for it (a rank past this point may rely on the file)."""
    if run.info.is_main:
        ckpt.save_checkpoint(run.ckpt_path, _state(run, phase))
    ddp_util.barrier(run.info)


# Fields a resumed run may change: they name, route or place the run, not what it computes.
_RESUME_FREE = ("out", "name", "progress", "device", "impl", "checkpoint_every", "checkpoint_path", "resume",
                "init_from")


def read_checkpoints(cfg: TrainConfig, *, quiet: bool = False) -> tuple[dict | None, dict | None]:
    """The checkpoints a run starts from, (resume, init_from), each checked against ``cfg`` before any data
    loads (the CLI calls this to turn a bad file into a usage error). resume is None when ``resume`` is off or
    the file does not exist yet (with a message unless ``quiet``); a resumable checkpoint wins over
    ``init_from``, which is then not read."""
    path = cfg.checkpoint_file()
    resume_ck = None
    if cfg.resume and not path.exists():
        if not quiet:
            print(f"resume: no checkpoint at {path} yet, starting from step 0", file=sys.stderr)
    elif cfg.resume:
        resume_ck = ckpt.load_checkpoint(path, arg="checkpoint_path")
        ckpt.check_training_state(resume_ck, path)
        now, then = asdict(cfg), resume_ck["config"]
        diff = sorted(k for k in set(now) | set(then) if k not in _RESUME_FREE and now.get(k) != then.get(k))
        if diff:
            raise ValueError(f"checkpoint_path: {str(path)!r} was written by another config (differs in "
                             + ", ".join(f"{k}={then.get(k)!r} there, {now.get(k)!r} here" for k in diff[:5])
                             + ")")
    init_ck = None
    if resume_ck is None and cfg.init_from:
        init_ck = ckpt.load_checkpoint(cfg.init_from, arg="init_from")
        if cfg.start_step:
            _check_continuation(init_ck, cfg)
    elif resume_ck is None and cfg.start_step:
        raise ValueError(f"start_step ({cfg.start_step}) > 0 continues a run: init_from must name the checkpoint "
                         "that run wrote at that step")
    return resume_ck, init_ck


# What a continued run shares with the run it continues: one LR curve over the global step (and the decay the
# carried AdamW state was built with) and one batch stream. The model's shape is checked by load_weights.
CONTINUE_SAME = ("lr", "min_lr_ratio", "lr_warmup_steps", "weight_decay", "batch_size", "seq_len", "data",
                  "tokenizer", "vocab_size", "data_seed")


def _check_continuation(ck: dict, cfg: TrainConfig) -> None:
    """ValueError naming init_from unless ``ck`` is a training checkpoint written at global LM step
    ``cfg.start_step`` by a run on the same LR schedule (same length too) and batch stream as ``cfg``."""
    ckpt.check_training_state(ck, cfg.init_from, arg="init_from")
    then = ck["config"]
    if ck["progress"]["lm_step"] != cfg.start_step:
        raise ValueError(f"init_from: {cfg.init_from!r} was written at LM step {ck['progress']['lm_step']}, this "
                         f"run starts at start_step {cfg.start_step}")
    diff = [f"{k}={then.get(k)!r} there, {getattr(cfg, k)!r} here" for k in CONTINUE_SAME
            if then.get(k) != getattr(cfg, k)]
    length = then.get("schedule_steps") or then.get("start_step", 0) + then["steps"]
    if length != cfg.schedule_length():
        diff.append(f"an LR schedule of {length} steps there, {cfg.schedule_length()} here")
    if diff:
        raise ValueError(f"init_from: {cfg.init_from!r} is not on this run's LR schedule and batch stream "
                         f"(differs in {'; '.join(diff[:5])})")


def _carry_optimisers(run: _Run, ck: dict) -> None:
    """A continued run (start_step > 0) keeps the AdamW state (moments, step counts) of the run it continues:
    for the main weights (the same tensors in the same order, dense or DSA), and for the indexer when the
    checkpoint had one; an indexer new to this run starts a fresh optimiser (it has no moments to keep).
    ValueError naming init_from when the checkpoint's batch stream is not where this run starts reading."""
    data, world = ck["data"], run.info.world
    if data["world_size"] != world:
        raise ValueError(f"init_from: {run.cfg.init_from!r} was written by {data['world_size']} rank(s), this run "
                         f"has {world}: the global batches would differ from the run it continues")
    if (data["train_seed"], data["next_train_batch"]) != (getattr(run.train_s, "seed", None), run.lm_step * world):
        raise ValueError(f"init_from: {run.cfg.init_from!r} stopped at batch {data['next_train_batch']} of the stream "
                         f"seeded {data['train_seed']!r}; this run reads batch {run.lm_step * world} of "
                         f"{getattr(run.train_s, 'seed', None)!r}")
    run.main_opt.load_state_dict(ck["optimizers"]["main"])
    idx = None
    if run.idx_opt is not None:
        idx = "new"
        if run.init["indexer"] == "loaded" and ck["optimizers"]["indexer"] is not None:
            run.idx_opt.load_state_dict(ck["optimizers"]["indexer"])
            idx = "carried"
    run.init.update(start_step=run.lm_step, optimizer={"main": "carried", "indexer": idx})


def _check_world(ck: dict, cfg: TrainConfig, info: ddp_util.DistInfo) -> None:
    if ck["data"]["world_size"] != info.world:
        raise ValueError(f"checkpoint_path: {str(cfg.checkpoint_file())!r} was written by "
                         f"{ck['data']['world_size']} rank(s), this run has {info.world}: the global batches "
                         "would differ from the interrupted run's")


def _restore(run: _Run, ck: dict) -> None:
    """Continues ``run`` from a checkpoint read by :func:`read_checkpoints`: weights, optimisers, position, record
    so far and RNG states."""
    data = ck["data"]
    for name, sampler in (("train_seed", run.train_s), ("warm_seed", run.warm_s)):
        if data[name] != getattr(sampler, "seed", None):
            raise ValueError(f"checkpoint_path: the checkpoint's {name} {data[name]!r} is not this run's data "
                             f"({getattr(sampler, 'seed', None)!r})")
    ckpt.load_weights(run.model, ck["state_dict"], arg="checkpoint_path", allow_new_indexer=False)
    run.main_opt.load_state_dict(ck["optimizers"]["main"])
    if run.idx_opt is not None:
        run.idx_opt.load_state_dict(ck["optimizers"]["indexer"])
    prog = ck["progress"]
    run.it = prog["it"]
    phase, run.lm_step, _ = _phase_at(run, run.it)
    if (phase, run.lm_step) != (prog["phase"], prog["lm_step"]) or _data_position(run) != data:
        raise ValueError(f"checkpoint_path: inconsistent progress {prog} / data position {data} for the "
                         f"phases {run.phases}")
    run.history = list(ck["history"])
    run.step_times = {p: list(ck["step_times"].get(p, [])) for p, _ in run.phases}
    run.init = ck.get("init_from")
    run.resumed = {"path": str(run.ckpt_path), "it": run.it, "lm_step": run.lm_step, "phase": phase}
    ckpt.set_rng_state(ck["rng"], run.device)


def _steady(ts: list[float]) -> float | None:
    ts = ts[min(5, len(ts) // 4):]  # drop start-up iterations (allocation, kernel selection)
    return sum(ts) / len(ts) if ts else None


def _record(run: _Run) -> dict:
    """The run record: config, history, final metrics with steady-state step times, provenance."""
    cfg, info, model = run.cfg, run.info, run.model
    final = dict(run.history[-1])
    final["time_per_step_s"] = _steady([t for p in ("dense", "sparse") if p in run.step_times
                                        for t in run.step_times[p]])
    final["time_per_step_by_phase_s"] = {p: _steady(ts) for p, ts in run.step_times.items()}
    if final["time_per_step_s"]:
        final["tokens_per_s"] = info.world * cfg.batch_size * cfg.seq_len / final["time_per_step_s"]
    record = {
        "name": cfg.run_name(),
        "config": asdict(cfg),
        "model_config": run.mcfg.to_dict(),
        "seed": cfg.seed,
        "data_seed": cfg.data_seed,
        "params": model.parameter_counts(),
        # what "auto" resolved to on this device (it changes speed and memory, not results)
        "runtime": {"impl": impl_on_device(run.mcfg.impl, run.device) if cfg.attention == "dsa" else None},
        "phases": run.phases,
        "data": run.meta,
        "history": run.history,
        "final": final,
        "wall_time_s": time.perf_counter() - run.t_start,
        "provenance": provenance(run.device),
        "distributed": {"world_size": info.world, "backend": info.backend,
                        "global_batch_size": info.world * cfg.batch_size,
                        "param_checksums_by_rank": ddp_util.param_checksums(model, info)},
    }
    if run.ckpt_path is not None:
        record["checkpoint"] = str(run.ckpt_path)
    if run.init is not None:
        record["init_from"] = run.init
    if run.resumed is not None:
        record["resumed_from"] = run.resumed
    return record


def train(cfg: TrainConfig, data=None) -> dict:
    """Runs the configured training and returns the run record (also written as JSON to ``cfg.out``
    unless it is the empty string). ``data`` = (vocab_size, train_sampler, warm_sampler, val_batches, meta)
    overrides the corpus (used by tests and synthetic tasks).

    Checkpoints (:mod:`dsa.train.checkpoints`) go to ``cfg.checkpoint_file()`` every ``checkpoint_every``
    iterations and at the end. ``resume`` continues from that file to the same result as an uninterrupted
    run, or starts from step 0 (with a message) when it does not exist yet: a long job can be resubmitted
    with ``--resume`` unchanged. ``init_from`` starts a new run from a checkpoint's weights: a dense
    checkpoint gives a DSA run its main weights and the indexer keeps its init from ``seed`` (DeepSeek's
    continued training: dense, then indexer warm-up and sparse training). With ``start_step`` 0 the run
    has fresh optimisers and a schedule of its own; with ``start_step`` > 0 it continues the run that wrote
    the checkpoint at that global step: same LR curve, next batches, AdamW state kept (module docstring).
    A resumable checkpoint wins over ``init_from`` (it already holds the weights init_from gave)."""
    cfg.check_runtime()
    info = ddp_util.init_from_env(cfg.device)
    resume_ck, init_ck = read_checkpoints(cfg, quiet=not info.is_main)
    if resume_ck is not None:
        _check_world(resume_ck, cfg, info)
    run = _setup(cfg, info, data, init_ck)
    if resume_ck is not None:
        _restore(run, resume_ck)
    elif init_ck is not None and cfg.start_step:
        _carry_optimisers(run, init_ck)
    run.t_start = time.perf_counter()
    run.bar = tqdm(total=run.total_iters, initial=run.it, desc=cfg.run_name(),
                   disable=not (cfg.progress and info.is_main), leave=False)
    if resume_ck is None:
        _log_eval(run, run.phases[0][0], None)
    _train_phases(run)
    run.bar.close()
    if run.ckpt_path is not None:
        _checkpoint(run, _phase_at(run, run.it)[0])
    record = _record(run)
    out = cfg.json_path()
    if out is not None and info.is_main:
        write_json_atomic(out, record)
        record["path"] = str(out)
    record["model"] = run.model
    return record


if __name__ == "__main__":  # the command line lives in dsa.train.cli (python -m dsa train)
    from dsa.train.cli import train_main  # noqa: PLC0415

    raise SystemExit(train_main(prog="python -m dsa.train.trainer"))
