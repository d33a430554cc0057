"""Where a training step's time goes: dense vs DSA variants, timed in one process, with an op breakdown.

    python -m dsa profile                          # CPU: a tiny model, seconds
    python -m dsa profile --seq-len 32768 --top-k 2048 --batch-size 1 --d-model 1024 --n-layers 4 \
        --n-heads 64 --n-kv-heads 1 --head-dim 128 --variants dense dsa --out runs/step-mqa-32k.json

A variant is ``dense`` or ``dsa[:<impl>]`` (impl auto | reference | triton, default auto: the model's own
path, Triton kernels on CUDA). Each runs the sparse-phase training step of ``dsa.train.trainer`` (LM loss + the
indexer's sparse KL loss, backward, both optimisers) on random tokens: the timing does not depend on the
data. The table gives ms/step and the ratio to the first variant; the JSON adds the top operators by self
device time (CUDA) or self CPU time and the share of the step spent in attention (the kernels whose names
match ATTENTION_OPS, :func:`attention_share`). Every variant is checked against the device before any work.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from dsa.checks import check_int, resolve_device
from dsa.model.config import ModelConfig
from dsa.model.lm import TransformerLM
from dsa.ops.dispatch import IMPLS, impl_on_device, triton_installed
from dsa.provenance import provenance


@dataclass
class StepProfileConfig:
    """The model and timing of ``python -m dsa profile`` (each field is a flag), checked at construction (the
    model for both attentions, the device)."""

    seq_len: int = field(default=128, metadata={"help": "sequence length L, tokens", "metavar": "L"})
    top_k: int = field(default=32, metadata={"help": "keys per query of the DSA variants, 1..seq_len",
                                             "metavar": "K"})
    batch_size: int = field(default=4, metadata={"help": "sequences per step", "metavar": "B"})
    d_model: int = field(default=64, metadata={"help": "hidden size"})
    n_layers: int = field(default=2, metadata={"help": "transformer blocks"})
    n_heads: int = field(default=4, metadata={"help": "query heads"})
    n_kv_heads: int = field(default=0, metadata={"help": "K/V heads, a divisor of n_heads; 0 = n_heads (MHA), "
                                                         "1 = MQA"})
    head_dim: int = field(default=0, metadata={"help": "per-head size, even; 0 = d_model / n_heads"})
    indexer_heads: int = field(default=4, metadata={"help": "lightning-indexer heads"})
    indexer_dim: int = field(default=64, metadata={"help": "lightning-indexer head size"})
    indexer_rope_dim: int = field(default=32, metadata={"help": "RoPE dims of each indexer head, even, "
                                                                "<= indexer_dim"})
    vocab_size: int = field(default=2048, metadata={"help": "vocabulary of the random tokens"})
    steps: int = field(default=10, metadata={"help": "timed steps per variant (the median is reported)",
                                             "metavar": "N"})
    warmup: int = field(default=3, metadata={"help": "untimed steps first (allocation, kernel selection)",
                                             "metavar": "N"})
    profile_steps: int = field(default=2, metadata={"help": "steps under torch.profiler for the op breakdown",
                                                    "metavar": "N"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when available), cpu, cuda or cuda:N",
                                                  "metavar": "DEVICE"})
    seed: int = field(default=0, metadata={"help": "seed of the weights and tokens (>= 0)"})

    def __post_init__(self) -> None:
        for name in ("steps", "profile_steps"):
            check_int(name, getattr(self, name), 1)
        for name in ("warmup", "seed", "n_kv_heads", "head_dim"):
            check_int(name, getattr(self, name), 0)
        if isinstance(self.top_k, int) and isinstance(self.seq_len, int) and not 1 <= self.top_k <= self.seq_len:
            raise ValueError(f"top_k must be in [1, seq_len={self.seq_len}], got {self.top_k}")
        for attention in ("dense", "dsa"):
            _model_config(self, attention, "auto")  # positive sizes, heads, head sizes, RoPE dims
        check_int("batch_size", self.batch_size, 1)
        resolve_device(self.device)


# Kernel-name fragments counted as attention in the share of a step: SDPA's kernels (cuDNN, flash, memory-
# efficient), FlexAttention's, and every DSA kernel (sparse attention forward/backward/probabilities, the indexer
# passes and scores-at, the top-k launches). On CPU there are no kernels: the share is over CPU operators.
ATTENTION_OPS = ("flash", "cudnn", "fmha", "sdpa", "efficient_attention", "scaled_dot_product", "sparse_attn",
                 "idx_", "radix", "bracket", "write_positions", "sample_", "flex")


def timed_rows(events, cuda: bool) -> tuple[list, str]:
    """(the profiler rows to sum, the attribute holding their self time in us): the GPU kernels on CUDA
    (operator rows hold the same time as their kernels and would count it twice), the operators on CPU."""
    from torch.autograd import DeviceType  # noqa: PLC0415

    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    return [e for e in events if (e.device_type == DeviceType.CUDA) == cuda], key


def attention_share(events, cuda: bool) -> float | None:
    """Share of a step's self time spent in attention (over :func:`timed_rows`)."""
    rows, key = timed_rows(events, cuda)
    total = sum(getattr(e, key, 0.0) for e in rows)
    attn = sum(getattr(e, key, 0.0) for e in rows if any(f in e.key.lower() for f in ATTENTION_OPS))
    return attn / total if total else None


def parse_variant(text: str) -> tuple[str, str]:
    """'dense' or 'dsa[:<impl>]' -> (attention, impl)."""
    if text == "dense":
        return "dense", "auto"
    parts = text.split(":")
    if parts[0] != "dsa" or len(parts) > 2 or (len(parts) == 2 and parts[1] not in IMPLS):
        raise ValueError(f"variant must be 'dense' or 'dsa[:<{'|'.join(IMPLS)}>]', got {text!r}")
    return "dsa", parts[1] if len(parts) == 2 else "auto"


def check_variant(text: str, device: torch.device) -> None:
    """Refuses a variant the device cannot run, before any work (a Triton variant on a CPU machine)."""
    _, impl = parse_variant(text)
    if impl == "triton" and (device.type != "cuda" or not triton_installed()):
        raise ValueError(f"variant {text!r} needs a CUDA device with Triton; this run is on {device}")


def _model_config(cfg: StepProfileConfig, attention: str, impl: str) -> ModelConfig:
    return ModelConfig(vocab_size=cfg.vocab_size, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                       n_kv_heads=cfg.n_kv_heads or None, head_dim=cfg.head_dim or None, max_seq_len=cfg.seq_len,
                       attention=attention, top_k=cfg.top_k, indexer_heads=cfg.indexer_heads,
                       indexer_dim=cfg.indexer_dim, indexer_rope_dim=cfg.indexer_rope_dim, impl=impl)


def _step_fn(cfg: StepProfileConfig, attention: str, impl: str, device: torch.device):
    mcfg = _model_config(cfg, attention, impl)
    model = TransformerLM(mcfg, seed=cfg.seed).to(device)
    opt = torch.optim.AdamW(model.main_parameters(), lr=1e-4)
    idx_params = model.indexer_parameters()
    idx_opt = torch.optim.AdamW(idx_params, lr=1e-4) if idx_params else None
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randint(cfg.vocab_size, (cfg.batch_size, cfg.seq_len + 1), generator=g).to(device)
    x, y = x[:, :-1], x[:, 1:]
    cuda = device.type == "cuda"
    il = "sparse" if attention == "dsa" else None

    def step():
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
        with ctx:
            out = model(x, sparse=True, indexer_loss=il)
        loss = F.cross_entropy(out.logits.flatten(0, 1).float(), y.flatten())
        if il:
            loss = loss + out.indexer_kl
        opt.zero_grad(set_to_none=True)
        if idx_opt:
            idx_opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if idx_opt:
            idx_opt.step()
        if cuda:
            torch.cuda.synchronize(device)

    return step


def profile_variant(cfg: StepProfileConfig, variant: str, device: torch.device, top: int = 15) -> dict:
    attention, impl = parse_variant(variant)
    step = _step_fn(cfg, attention, impl, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(cfg.warmup):
        step()
    ts = []
    for _ in range(cfg.steps):
        t0 = time.perf_counter()
        step()
        ts.append((time.perf_counter() - t0) * 1e3)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(cfg.profile_steps):
            step()
    cuda = device.type == "cuda"
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = prof.key_averages()
    rows = sorted(events, key=lambda e: getattr(e, key, 0.0), reverse=True)[:top]
    ops = [{"name": e.key, "calls_per_step": e.count / cfg.profile_steps,
            "self_ms_per_step": getattr(e, key, 0.0) / 1e3 / cfg.profile_steps} for e in rows]
    return {
        "variant": variant, "attention": attention, "impl": impl, "impl_resolved": impl_on_device(impl, device),
        "attention_share": attention_share(events, cuda),
        "ms_per_step_median": statistics.median(ts), "ms_per_step_all": ts,
        "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        "top_ops": ops, "op_time_kind": "self device time" if cuda else "self CPU time",
    }


def check_variants(cfg: StepProfileConfig, variants: list[str]) -> None:
    """Every variant against the device and the model, before any time is spent."""
    if not variants:
        raise ValueError("variants must name at least one variant")
    device = resolve_device(cfg.device)
    for v in variants:
        check_variant(v, device)
        _model_config(cfg, *parse_variant(v))


def run(cfg: StepProfileConfig, variants: list[str]) -> dict:
    check_variants(cfg, variants)
    device = resolve_device(cfg.device)
    rows = [profile_variant(cfg, v, device) for v in variants]
    base = rows[0]["ms_per_step_median"]
    for r in rows:
        r["ratio_to_first"] = r["ms_per_step_median"] / base
    return {"config": asdict(cfg), "variants": rows, "provenance": provenance(device)}


def table(res: dict) -> str:
    lines = [f"{'variant':<22}{'ms/step':>10}{'x first':>9}{'peak MB':>10}{'attn %':>8}   top op (self time per step)"]
    for r in res["variants"]:
        op = r["top_ops"][0] if r["top_ops"] else {"name": "-", "self_ms_per_step": 0.0}
        mem = f"{r['peak_mem_mb']:.0f}" if r["peak_mem_mb"] is not None else "-"
        share = f"{100 * r['attention_share']:.0f}" if r["attention_share"] is not None else "-"
        lines.append(f"{r['variant']:<22}{r['ms_per_step_median']:>10.2f}{r['ratio_to_first']:>9.2f}"
                     f"{mem:>10}{share:>8}   {op['name'][:40]} {op['self_ms_per_step']:.2f} ms")
    return "\n".join(lines)


def ops_table(res: dict) -> str:
    """Each variant's top operators (self time per step)."""
    lines = []
    for r in res["variants"]:
        lines.append(f"\n{r['variant']} ({r['op_time_kind']}, ms per step)")
        for o in r["top_ops"]:
            lines.append(f"  {o['self_ms_per_step']:8.2f}  x{o['calls_per_step']:<6.0f} {o['name'][:90]}")
    return "\n".join(lines)


if __name__ == "__main__":
    from dsa.bench.cli import profile_main  # noqa: PLC0415

    sys.exit(profile_main(prog="python -m dsa.bench.step_profile"))
