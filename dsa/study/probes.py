"""The causality probe: does any output at position <= t depend on an input after t?

Two checks, both exact (no tolerance): (1) replace every input after t by fresh random values and compare
the outputs at <= t bit for bit; (2) the gradient of the outputs at <= t with respect to the inputs after
t must be exactly zero. A causal attention passes both; the seeds' leaky top-k fails them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class ProbeResult:
    t: int
    max_change_at_or_before_t: float  # max |out'[:, :t+1] - out[:, :t+1]| after perturbing inputs > t
    grad_leak: float  # max |d(sum of weighted outputs <= t) / d(inputs > t)|
    leaks: bool

    def __str__(self) -> str:
        verdict = "LEAKS the future" if self.leaks else "causal"
        return (f"t={self.t}: max output change at <= t = {self.max_change_at_or_before_t:.3g}, "
                f"max gradient from inputs > t = {self.grad_leak:.3g} -> {verdict}")


def causality_probe(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    t: int,
    *,
    seq_dim: int = 1,
    generator: torch.Generator | None = None,
) -> ProbeResult:
    """Probe ``fn`` (a map from a float tensor with positions on ``seq_dim`` to a tensor with positions on
    the same dim, e.g. (B, L, D) -> (B, L, D')) at position ``t``.

    x: float tensor, (B, L, D) by default. Returns a ProbeResult; ``leaks`` is True if either check fails.
    """
    l = x.shape[seq_dim]
    if not 0 <= t < l - 1:
        raise ValueError(f"t must be in [0, L-2] = [0, {l - 2}] so that some input lies after it, got {t}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be a float tensor (gradients are taken w.r.t. it), got {x.dtype}")
    before = [slice(None)] * x.ndim
    before[seq_dim] = slice(0, t + 1)
    after = [slice(None)] * x.ndim
    after[seq_dim] = slice(t + 1, None)
    before, after = tuple(before), tuple(after)

    with torch.no_grad():
        y0 = fn(x)
        x2 = x.clone()
        noise = torch.randn(x2[after].shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
        x2[after] = noise * x.float().std().to(x.dtype)
        y1 = fn(x2)
    change = float((y1[before].float() - y0[before].float()).abs().max())

    xg = x.detach().clone().requires_grad_(True)
    y = fn(xg)
    weights = torch.randn(y[before].shape, generator=generator, dtype=torch.float32).to(y.device, y.dtype)
    (grad,) = torch.autograd.grad((y[before] * weights).sum(), xg, allow_unused=True)
    grad_leak = 0.0 if grad is None else float(grad[after].abs().max())
    return ProbeResult(t=t, max_change_at_or_before_t=change, grad_leak=grad_leak, leaks=change != 0 or grad_leak != 0)


def model_probe(model: torch.nn.Module, tokens: torch.Tensor, t: int, **forward_kw) -> ProbeResult:
    """Causality probe of a whole TransformerLM: inputs are its token embeddings (B, L, D), outputs its
    logits (B, L, V). tokens: (B, L) int64."""
    with torch.no_grad():
        emb = model.embed(tokens)
    return causality_probe(lambda e: model(tokens, embeds=e, **forward_kw).logits, emb, t)
