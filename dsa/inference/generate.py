"""Sampling from a model with its cache: one prefill of the (right-padded) prompts, then one token per step."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dsa.model import TransformerLM


@dataclass
class Generation:
    """What :func:`generate` returns."""

    tokens: list[list[int]]  # the new tokens of each sequence
    prompt_lengths: list[int]
    # per step (the prompt's last token, then each fed generated token), per layer: (B, K) int32 selected cached
    # positions of the token fed at that step (DSA with record_selection; -1 = unused slot)
    selections: list[list[torch.Tensor]] = field(default_factory=list)


def _check_sampling(max_new_tokens: int, temperature: float, top_p: float, seed: int) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")


def _prompt_batch(prompt: torch.Tensor | list[list[int]], vocab: int, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) right-padded int64 tokens and the (B,) prompt lengths."""
    if isinstance(prompt, torch.Tensor):
        if prompt.ndim != 2 or prompt.dtype not in (torch.int32, torch.int64) or prompt.shape[1] < 1:
            raise ValueError("prompt must be a (B, T) integer tensor with T >= 1, "
                             f"got {tuple(prompt.shape)} {prompt.dtype}")
        rows = prompt.tolist()
    elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(r, (list, tuple)) for r in prompt):
        rows = [list(r) for r in prompt]
    else:
        raise TypeError("prompt must be a (B, T) integer tensor or a non-empty list of token lists")
    if any(len(r) == 0 for r in rows):
        raise ValueError("prompt: every sequence needs at least one token")
    if any(isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < vocab for r in rows for x in r):
        raise ValueError(f"prompt tokens must be ints in [0, vocab_size={vocab})")
    t = max(len(r) for r in rows)
    tokens = torch.tensor([r + [0] * (t - len(r)) for r in rows], dtype=torch.long, device=device)
    return tokens, torch.tensor([len(r) for r in rows], dtype=torch.long, device=device)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """logits (B, V) -> (B,) int64: greedy at temperature 0, else a draw from the softmax at ``temperature``
    restricted to the smallest set of tokens whose probability reaches ``top_p`` (nucleus sampling)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        p_sorted, order = probs.sort(-1, descending=True)
        keep = p_sorted.cumsum(-1) - p_sorted < top_p  # the top token is always kept
        probs = torch.zeros_like(probs).scatter_(-1, order, p_sorted * keep)
    return torch.multinomial(probs, 1, generator=gen)[:, 0]


@torch.no_grad()
def generate(
    model: TransformerLM,
    prompt: torch.Tensor | list[list[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    *,
    sparse: bool = True,
    record_selection: bool = False,
) -> Generation:
    """Sample ``max_new_tokens`` tokens after each prompt, with the model's cache.

    prompt: (B, T) integer tensor, or a list of B token lists of different lengths (right-padded into one
    batch; each sequence continues from its own length). temperature 0: greedy. sparse: False runs a DSA model
    with dense attention (the same weights). record_selection: keep each step's DSA selection per layer.
    The model runs in eval mode (its mode is restored after).
    """
    _check_sampling(max_new_tokens, temperature, top_p, seed)
    if not isinstance(model, TransformerLM):
        raise TypeError(f"model must be a TransformerLM, got {type(model).__name__}")
    device = model.embed.weight.device
    tokens, lengths = _prompt_batch(prompt, model.cfg.vocab_size, device)
    need = tokens.shape[1] + max_new_tokens
    if need > model.cfg.max_seq_len:
        raise ValueError(f"the longest prompt ({tokens.shape[1]}) + max_new_tokens ({max_new_tokens}) = {need} "
                         f"exceeds the model's max_seq_len ({model.cfg.max_seq_len})")
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        cache = model.init_cache(tokens.shape[0], need)
        out = model(tokens, cache=cache, lengths=lengths, sparse=sparse)
        bi = torch.arange(tokens.shape[0], device=device)
        logits = out.logits[bi, lengths - 1]
        selections = [[_last_selection(a.selection, lengths) for a in out.aux]] if record_selection else []
        new = []
        for step in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_p, gen)
            new.append(nxt)
            if step + 1 == max_new_tokens:
                break
            out = model(nxt[:, None], cache=cache, sparse=sparse)
            logits = out.logits[:, 0]
            if record_selection:
                selections.append([_last_selection(a.selection, None) for a in out.aux])
    finally:
        model.train(was_training)
    toks = torch.stack(new, 1).tolist()
    return Generation(tokens=toks, prompt_lengths=lengths.tolist(), selections=selections)


def _last_selection(sel: torch.Tensor | None, lengths: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T, K) -> (B, K) on the CPU: each sequence's last real token's selection (None for dense layers)."""
    if sel is None:
        return None
    if lengths is None:
        return sel[:, -1].cpu()
    return sel[torch.arange(sel.shape[0], device=sel.device), lengths - 1].cpu()
