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

Usage: python -m dsa.train.trainer --attention dense|dsa --seq-len 256 --top-k 128 --steps 1000 ...
"""

from __future__ import annotations

import argparse
import contextlib
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

from dsa.train import distributed as ddp_util
from dsa.model.config import ATTENTION_KINDS, ModelConfig
from dsa.model.lm import TransformerLM
from dsa.ops.dispatch import check_impl, impl_on_device
from dsa.checks import resolve_device
from dsa.provenance import REPO_ROOT, provenance, write_json_atomic

RECIPES = ("deepseek", "scratch")


@dataclass
class TrainConfig:
    attention: str = "dense"
    recipe: str = "deepseek"
    seq_len: int = 128
    top_k: int = 64
    k_policy: str = "fixed"  # fixed | mass | entropy: per-query k (dsa.ops.adaptive), capped at top_k
    k_mass: float = 0.9
    batch_size: int = 8
    steps: int = 100  # LM-training steps, identical for dense and DSA runs
    dense_steps: int | None = None  # deepseek recipe: default steps // 4
    warmup_steps: int | None = None  # deepseek recipe: default max(steps // 10, 1); extra, indexer-only
    indexer_kl: bool | None = None  # default: True for deepseek, False for scratch
    leak_future: bool = False
    data: str = "shakespeare"
    tokenizer: str = "bpe"
    vocab_size: int = 2048
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None
    head_dim: int | None = None  # None = d_model / n_heads
    indexer_heads: int = 4
    indexer_dim: int = 32
    indexer_rope_dim: int = 16
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    lr_warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    indexer_lr: float = 1e-3
    eval_every: int = 50
    eval_batches: int = 4
    seed: int = 0
    data_seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    impl: str = "auto"  # every attention op: auto (Triton on CUDA, else the reference) | reference | triton
    out: str | None = None  # run JSON path; default runs/<name>.json
    name: str | None = None
    progress: bool = True
    design: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "the design factors of the run, recorded by the experiment that built it (dsa.train.experiments: "
                "experiment, arm, designed k/L ratio and k rule, ablation and level); not part of the sweep key",
        "cli": False})

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        for name in ("seq_len", "batch_size", "steps", "eval_every", "eval_batches"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k!r}")
        if self.top_k > self.seq_len:
            raise ValueError(f"top_k ({self.top_k}) must be <= seq_len ({self.seq_len})")
        check_impl(self.impl)
        if not isinstance(self.design, dict):
            raise TypeError(f"design must be a dict of design factors, got {type(self.design).__name__}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        is_ds = self.recipe == "deepseek" and self.attention == "dsa"
        if self.dense_steps is None:
            self.dense_steps = self.steps // 4 if is_ds else 0
        if self.warmup_steps is None:
            self.warmup_steps = max(self.steps // 10, 1) if is_ds else 0
        if self.indexer_kl is None:
            self.indexer_kl = is_ds
        if not 0 <= self.dense_steps <= self.steps:
            raise ValueError(f"dense_steps must be in [0, steps={self.steps}], got {self.dense_steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.attention == "dense" and (self.dense_steps not in (0, self.steps) or self.warmup_steps):
            raise ValueError("dense_steps / warmup_steps only apply to attention='dsa'")
        if self.warmup_steps and not self.indexer_kl:
            raise ValueError("warmup_steps > 0 trains the indexer by its KL loss: it needs indexer_kl")

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

    def run_name(self) -> str:
        if self.name:
            return self.name
        att = self.attention if self.attention == "dense" else f"dsa-{self.recipe}" + ("-leaky" if self.leak_future else "")
        return f"{att}-L{self.seq_len}-k{self.top_k}-s{self.seed}"


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr, over the LM steps."""
    if step < cfg.lr_warmup_steps:
        return cfg.lr * (step + 1) / cfg.lr_warmup_steps
    span = max(cfg.steps - cfg.lr_warmup_steps, 1)
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
        tot_loss += float(F.cross_entropy(out.logits.flatten(0, 1), y.flatten(), reduction="sum"))
        tot_correct += int((out.logits.argmax(-1) == y).sum())
        tot_n += y.numel()
        if out.recall is not None:
            rec = out.recall
        if sparse and i == 0:
            # keys each query attends to (an adaptive policy's average k; causal queries near the start
            # have fewer than k past tokens), per layer and as the mean over layers
            by_layer = [float((a.selection >= 0).sum(-1).float().mean()) for a in out.aux if a.selection is not None]
            if by_layer:
                sel_k = {"mean_k": sum(by_layer) / len(by_layer), "mean_k_by_layer": by_layer}
    model.train()
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


def train(cfg: TrainConfig, data=None) -> dict:
    """Runs the configured training and returns the run record (also written as JSON to ``cfg.out``
    unless it is the empty string). ``data`` = (vocab_size, train_sampler, warm_sampler, val_batches, meta)
    overrides the corpus (used by tests and synthetic tasks)."""
    info = ddp_util.init_from_env(cfg.device)
    device = resolve_device(cfg.device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    torch.manual_seed(cfg.seed)
    if data is None:
        corpus, train_s, warm_s, val = ddp_util.rank_zero_first(info, lambda: _load_data(cfg))
        vocab, meta = corpus.vocab_size, corpus.meta
    else:
        vocab, train_s, warm_s, val, meta = data
    mcfg = cfg.model_config(vocab)
    model = TransformerLM(mcfg, seed=cfg.seed).to(device)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if use_bf16 and device.type != "cuda":
        raise ValueError("precision='bf16' autocast is only used on CUDA here")

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

    main_params = model.main_parameters()
    decay = [p for p in main_params if p.ndim >= 2]
    no_decay = [p for p in main_params if p.ndim < 2]
    main_opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    idx_params = model.indexer_parameters()
    idx_opt = torch.optim.AdamW(idx_params, lr=cfg.indexer_lr, weight_decay=0.0) if idx_params else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    phases = cfg.phases()
    total_iters = sum(n for _, n in phases)
    history: list[dict] = []
    step_times: dict[str, list[float]] = {p: [] for p, _ in phases}
    window: list[float] = []
    lm_step = 0
    it = 0
    t_start = time.perf_counter()
    bar = tqdm(total=total_iters, desc=cfg.run_name(), disable=not (cfg.progress and info.is_main), leave=False)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def do_eval(phase: str, train_loss: float | None) -> None:
        sparse = phase == "sparse"
        rec = cfg.attention == "dsa"
        entry = {"iter": it, "lm_step": lm_step, "phase": phase, "train_loss": train_loss}
        entry.update(evaluate(model, val, device, autocast, sparse=sparse, recall=rec))
        if cfg.leak_future and sparse:
            with _leak_off(model):
                causal = evaluate(model, val, device, autocast, sparse=True, recall=False)
            entry["val_loss_causal_eval"] = causal["val_loss"]
            entry["val_acc_causal_eval"] = causal["val_acc"]
        if window:
            mean_t = sum(window) / len(window)
            entry["time_per_step_s"] = mean_t
            entry["tokens_per_s"] = info.world * cfg.batch_size * cfg.seq_len / mean_t
            window.clear()
        entry.update(_peak_memory_mb(device))
        history.append(entry)
        bar.set_postfix(phase=phase, val_loss=f"{entry['val_loss']:.3f}")

    do_eval(phases[0][0], None)
    train_loss = None
    for phase, n in phases:
        warm = phase == "warmup"
        for p in main_params:
            p.requires_grad_(not warm)
        fwd = model if warm else ddp_util.wrap(model, info, device)
        for j in range(n):
            # under torchrun each rank takes its own slice of the same deterministic batch stream
            b_i = (j if warm else lm_step) * info.world + info.rank
            x, y = (warm_s if warm else train_s).batch(b_i)
            x, y = x.to(device), y.to(device)
            sync()
            t0 = time.perf_counter()
            if warm:
                with autocast():
                    out = model(x, sparse=False, indexer_loss="dense")
                loss = out.indexer_kl
                idx_opt.zero_grad(set_to_none=True)
                loss.backward()
                ddp_util.all_reduce_grads(idx_params, info)
                torch.nn.utils.clip_grad_norm_(idx_params, cfg.grad_clip)
                idx_opt.step()
                train_loss = float(loss.detach())
            else:
                il = "sparse" if phase == "sparse" and cfg.indexer_kl else None
                with autocast():
                    out = fwd(x, sparse=phase == "sparse", indexer_loss=il)
                lm = F.cross_entropy(out.logits.flatten(0, 1), y.flatten())
                total = lm + out.indexer_kl if il else lm
                main_opt.zero_grad(set_to_none=True)
                if idx_opt is not None:
                    idx_opt.zero_grad(set_to_none=True)
                total.backward()
                torch.nn.utils.clip_grad_norm_(main_params, cfg.grad_clip)
                for g in main_opt.param_groups:
                    g["lr"] = lr_at(lm_step, cfg)
                main_opt.step()
                if il:
                    torch.nn.utils.clip_grad_norm_(idx_params, cfg.grad_clip)
                    idx_opt.step()
                train_loss = float(lm.detach())
                lm_step += 1
            sync()
            dt = time.perf_counter() - t0
            window.append(dt)
            step_times[phase].append(dt)
            it += 1
            bar.update(1)
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"non-finite loss {train_loss} at iteration {it} ({phase})")
            if it % cfg.eval_every == 0 or j == n - 1:
                do_eval(phase, train_loss)
        if fwd is not model:  # drop this phase's DDP wrapper (and its gradient hooks) before requires_grad changes
            fwd = None
            ddp_util.release_wrappers()
    bar.close()
    for p in main_params:
        p.requires_grad_(True)

    def steady(ts: list[float]) -> float | None:
        ts = ts[min(5, len(ts) // 4):]  # drop start-up iterations (allocation, kernel selection)
        return sum(ts) / len(ts) if ts else None

    final = dict(history[-1])
    final["time_per_step_s"] = steady([t for p in ("dense", "sparse") if p in step_times for t in step_times[p]])
    final["time_per_step_by_phase_s"] = {p: steady(ts) for p, ts in step_times.items()}
    if final["time_per_step_s"]:
        final["tokens_per_s"] = info.world * cfg.batch_size * cfg.seq_len / final["time_per_step_s"]
    record = {
        "name": cfg.run_name(),
        "config": asdict(cfg),
        "model_config": mcfg.to_dict(),
        "seed": cfg.seed,
        "data_seed": cfg.data_seed,
        "params": model.parameter_counts(),
        # what "auto" resolved to on this device (it changes speed and memory, not results)
        "runtime": {"impl": impl_on_device(mcfg.impl, device) if cfg.attention == "dsa" else None},
        "phases": phases,
        "data": meta,
        "history": history,
        "final": final,
        "wall_time_s": time.perf_counter() - t_start,
        "provenance": provenance(device),
        "distributed": {"world_size": info.world, "backend": info.backend,
                        "global_batch_size": info.world * cfg.batch_size,
                        "param_checksums_by_rank": ddp_util.param_checksums(model, info)},
    }
    if cfg.out != "" and info.is_main:
        out = Path(cfg.out) if cfg.out else REPO_ROOT / "runs" / f"{cfg.run_name()}.json"
        write_json_atomic(out, record)
        record["path"] = str(out)
    record["model"] = model
    return record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dsa.train.trainer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TrainConfig):
        if f.metadata.get("cli") is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        typ = f.type if isinstance(f.type, str) else f.type.__name__
        if "bool" in typ:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif "int" in typ:
            p.add_argument(flag, type=int, default=default)
        elif "float" in typ:
            p.add_argument(flag, type=float, default=default)
        else:
            p.add_argument(flag, type=str, default=default)
    p.set_defaults(attention="dense")
    p.add_argument("--print-json", action="store_true", help="print the final metrics as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    print_json = args.pop("print_json")
    try:
        cfg = TrainConfig(**args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rec = train(cfg)
    if not ddp_util.is_main_process():
        ddp_util.barrier_and_close()
        return 0
    f = rec["final"]
    line = (f"{rec['name']}: val_loss={f['val_loss']:.4f} val_acc={f['val_acc']:.4f} ppl={f['val_ppl']:.2f} "
            f"time/step={f['time_per_step_s'] * 1e3:.1f} ms")
    if "recall" in f:
        line += f" recall={f['recall']:.3f}"
    if "val_loss_causal_eval" in f:
        line += f" val_loss(causal guard on at eval)={f['val_loss_causal_eval']:.4f}"
    print(line)
    print(f"wrote {rec['path']}" if "path" in rec else "no JSON written (--out '')")
    if print_json:
        import json  # noqa: PLC0415

        print(json.dumps({k: v for k, v in f.items()}, default=str))
    ddp_util.barrier_and_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
