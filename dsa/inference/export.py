"""A trained :class:`~dsa.model.TransformerLM` to ONNX, dense or DSA, through the reference ops.

The graph maps tokens (B, L) int64 to logits (B, L, vocab) float32, with the batch and sequence axes dynamic
(lengths 1 .. ``max_seq_len``) unless asked otherwise. DSA's selection is exported as ONNX ``TopK`` over the
causally masked indexer scores: the same positions as the reference's stable sort, since ONNX's TopK ranks
equal scores by the lower position (its specification; onnxruntime follows it, tested with tied scores). The
sparse attention is the masked reference (one SDPA with the selection as a log-count bias).

Not exportable, each with a ValueError saying why: the Triton path (``impl='triton'``, or a CUDA model with
``impl='auto'``, which runs the kernels), the adaptive k policies (a per-query k sets the selection's width
from the data), the seeds' ``leak_future`` bug, weights other than float32.

CLI: ``python -m dsa.inference.export --checkpoint CKPT --output model.onnx [--seq-len N] [--static]
[--check]``. Needs the ``onnx`` extra (``pip install -e '.[onnx]'``): onnx, onnxruntime, onnxscript.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsa.checks import check_out_file
from dsa.cli import usage_errors
from dsa.model import TransformerLM

EXPORTERS = ("torchscript", "dynamo")
# float32 logits of the reference vs onnxruntime: the same ops in another order (measured ~4e-7 on the test
# models); the bound leaves room for larger vocabularies and deeper models
DEFAULT_ATOL = 1e-4


class LogitsGraph(nn.Module):
    """What is exported: tokens (B, L) int64 -> logits (B, L, V) float32 [and, with ``with_selection``, every
    DSA layer's selection (n_layers, B, L, K) int64, -1 in unused slots, to compare it with the reference]."""

    def __init__(self, model: TransformerLM, with_selection: bool = False) -> None:
        super().__init__()
        self.model = model
        self.with_selection = with_selection

    def forward(self, tokens: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.model(tokens)
        if not self.with_selection:
            return out.logits
        return out.logits, torch.stack([a.selection.long() for a in out.aux])


def why_not_exportable(model: Any) -> str | None:
    """None when ``model`` can be exported, else the reason in words."""
    if not isinstance(model, TransformerLM):
        return f"model must be a dsa.model.TransformerLM, got {type(model).__name__}"
    cfg = model.cfg
    if cfg.impl == "triton":
        return "impl='triton' runs the Triton kernels, which ONNX cannot express: rebuild with impl='reference'"
    params = list(model.parameters())
    if any(p.is_cuda for p in params):
        why = " (impl='auto' runs the Triton kernels on CUDA)" if cfg.impl == "auto" else ""
        return f"the model is on CUDA{why}: export a CPU copy (model.cpu())"
    if any(p.dtype != torch.float32 for p in params):
        return "the weights must be float32 (model.float())"
    if cfg.attention == "dsa" and cfg.k_policy != "fixed":
        return (f"k_policy={cfg.k_policy!r}: an adaptive k sets the selection's width from the data, which a "
                "static graph cannot; export with a fixed k (model.selection_override(k_policy='fixed'))")
    if cfg.attention == "dsa" and cfg.indexer_precision != "bf16":
        # the export's selection runs the bf16 formula whatever the precision: it would select other positions
        return (f"indexer_precision={cfg.indexer_precision!r}: the exported graph has no FP8 quantization of the "
                "indexer (Hadamard rotation, e4m3 rounding, per-token scales), so its selection would differ from "
                "the model's; export a bf16-indexer model")
    if cfg.attention == "dsa" and cfg.leak_future:
        return "leak_future is the seeds' bug (the selection reads future tokens), not a model to deploy"
    return None


def default_seq_len(model: TransformerLM) -> int:
    """The example length traced by default: 128 tokens (the context if shorter), at least DSA's top_k."""
    cfg = model.cfg
    n = min(128, cfg.max_seq_len)
    return max(n, cfg.top_k) if cfg.attention == "dsa" else n


def _check_args(model: Any, seq_len: int, batch_size: int, dynamic: bool, exporter: str, opset: int) -> None:
    why = why_not_exportable(model)
    if why:
        raise ValueError(f"cannot export: {why}")
    for name, v in (("seq_len", seq_len), ("batch_size", batch_size), ("opset", opset)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    cfg = model.cfg
    if seq_len > cfg.max_seq_len:
        raise ValueError(f"seq_len ({seq_len}) must be <= the model's max_seq_len ({cfg.max_seq_len})")
    if dynamic and cfg.attention == "dsa" and seq_len < cfg.top_k:
        raise ValueError(f"seq_len ({seq_len}) must be >= top_k ({cfg.top_k}) for a dynamic DSA export: the "
                         "example's length fixes the graph's k (min(top_k, L))")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if exporter == "dynamo" and opset < 18:
        raise ValueError(f"the dynamo exporter needs opset >= 18, got {opset}")


def export_onnx(
    model: TransformerLM,
    path: str | Path,
    seq_len: int,
    *,
    batch_size: int = 1,
    dynamic: bool = True,
    exporter: str = "torchscript",
    opset: int = 18,
    with_selection: bool = False,
) -> Path:
    """Write ``model`` as an ONNX graph to ``path`` and return the path.

    seq_len, batch_size: the example traced, tokens (batch_size, seq_len); with ``dynamic`` the graph takes
    any batch and any length 1 .. max_seq_len (a DSA example must be >= top_k), otherwise exactly that shape.
    exporter: 'torchscript' (``torch.onnx.export(dynamo=False)``, the default: seconds) or 'dynamo'
    (torch.export; minutes on a CPU, its sequence axis must stay >= top_k). with_selection: also output
    every DSA layer's selection (see :class:`LogitsGraph`). The model is traced in eval mode, on CPU.
    """
    _check_args(model, seq_len, batch_size, dynamic, exporter, opset)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = LogitsGraph(model, with_selection).eval()
    tokens = torch.randint(0, model.cfg.vocab_size, (batch_size, seq_len), generator=torch.Generator().manual_seed(0))
    outputs = ["logits", "selection"] if with_selection else ["logits"]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter is deprecated in favour of dynamo, which is far slower on these graphs
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            if exporter == "torchscript":
                axes = {"tokens": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"},
                        "selection": {1: "batch", 2: "seq"}}
                torch.onnx.export(graph, (tokens,), str(path), dynamo=False, opset_version=opset,
                                  input_names=["tokens"], output_names=outputs,
                                  dynamic_axes={k: axes[k] for k in ["tokens", *outputs]} if dynamic else None)
            else:
                _export_dynamo(graph, tokens, path, dynamic, opset, outputs)
    finally:
        model.train(was_training)
    return path


def _export_dynamo(graph: LogitsGraph, tokens: torch.Tensor, path: Path, dynamic: bool, opset: int,
                   outputs: list[str]) -> None:
    cfg = graph.model.cfg
    shapes = None
    if dynamic:
        lo = cfg.top_k if cfg.attention == "dsa" else 1  # min(top_k, L) must resolve to top_k
        shapes = {"tokens": {0: torch.export.Dim("batch", max=4096),
                             1: torch.export.Dim("seq", min=lo, max=cfg.max_seq_len)}}
    torch.onnx.export(graph, (tokens,), str(path), dynamo=True, opset_version=opset, input_names=["tokens"],
                      output_names=outputs, dynamic_shapes=shapes, verbose=False)


def run_onnx(path: str | Path, tokens: torch.Tensor) -> list[Any]:
    """The graph at ``path`` on onnxruntime's CPU provider: tokens (B, L) int -> its outputs (numpy arrays)."""
    import onnxruntime as ort  # noqa: PLC0415 (the onnx extra)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"tokens": tokens.to(torch.int64).cpu().numpy()})


def logits_difference(model: TransformerLM, path: str | Path, tokens: torch.Tensor) -> float:
    """Largest |logit difference| between ``model`` (PyTorch) and the exported graph on ``tokens`` (B, L)."""
    with torch.no_grad():
        ref = model(tokens).logits
    got = torch.from_numpy(run_onnx(path, tokens)[0])
    return float((got - ref).abs().max())


# ------------------------------------------------------------------------------------------------------ CLI
def _parser(prog: str | None = "python -m dsa.inference.export") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Export a trained checkpoint (dense or DSA) to ONNX through the reference ops and, with "
                    "--check, compare its logits with PyTorch's on onnxruntime (CPU).")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a checkpoint written by training (dsa.train.checkpoints)")
    p.add_argument("--output", required=True, metavar="PATH", help="where to write the .onnx file")
    p.add_argument("--seq-len", type=int, default=None, metavar="L",
                   help="length of the example traced (default: 128, the context if shorter, at least top_k)")
    p.add_argument("--batch-size", type=int, default=1, metavar="B", help="batch of the example traced (default 1)")
    p.add_argument("--static", action="store_true",
                   help="fix the batch and sequence axes to the example's (default: both dynamic)")
    p.add_argument("--exporter", choices=EXPORTERS, default="torchscript",
                   help="torch.onnx.export(dynamo=False) (default, seconds) or the torch.export-based one (minutes)")
    p.add_argument("--opset", type=int, default=18, metavar="N", help="ONNX opset (default 18)")
    p.add_argument("--check", action="store_true",
                   help=f"run the graph on onnxruntime and compare its logits with PyTorch's (max |diff| <= "
                        f"{DEFAULT_ATOL:g}); exit 1 if they differ")
    return p


def _load_model(path: str) -> TransformerLM:
    """The checkpoint's model on CPU; ImportError when this install cannot read checkpoints."""
    from dsa.train.checkpoints import load_model  # noqa: PLC0415 (training tier; only the CLI needs it)

    return load_model(path, map_location="cpu")


def _check_flags(args: argparse.Namespace) -> None:
    """ValueError naming the first bad flag (the model-dependent checks come once it is loaded)."""
    for name in ("seq_len", "batch_size", "opset"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if not Path(args.checkpoint).is_file():
        raise ValueError(f"--checkpoint: no file at {args.checkpoint!r}")
    check_out_file("--output", args.output)


def main(argv: list[str] | None = None, prog: str | None = "python -m dsa.inference.export") -> int:
    """``python -m dsa export``: a checkpoint to ONNX, optionally checked on onnxruntime."""
    parser = _parser(prog)
    args = parser.parse_args(argv)
    with usage_errors(parser):
        _check_flags(args)
    try:
        import onnx  # noqa: F401, PLC0415
        if args.check:
            import onnxruntime  # noqa: F401, PLC0415
    except ImportError as e:
        parser.error(f"{e.name} is not installed: pip install -e '.[onnx]'")
    try:
        model = _load_model(args.checkpoint)
    except ImportError as e:
        parser.error(f"reading checkpoints needs dsa.train.checkpoints.load_model, not importable here ({e})")
    except (ValueError, FileNotFoundError, TypeError) as e:
        parser.error(f"--checkpoint: {e}")
    seq_len = args.seq_len or default_seq_len(model)
    with usage_errors(parser):
        _check_args(model, seq_len, args.batch_size, not args.static, args.exporter, args.opset)
    path = export_onnx(model, args.output, seq_len, batch_size=args.batch_size, dynamic=not args.static,
                       exporter=args.exporter, opset=args.opset)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {model.cfg.attention}, "
          f"{'dynamic batch and length' if not args.static else f'shape ({args.batch_size}, {seq_len})'})")
    if args.check:
        tokens = torch.randint(0, model.cfg.vocab_size, (args.batch_size, seq_len),
                               generator=torch.Generator().manual_seed(1))
        diff = logits_difference(model, path, tokens)
        ok = diff <= DEFAULT_ATOL
        print(f"onnxruntime vs PyTorch: max |logit difference| {diff:.2e} ({'ok' if ok else 'TOO LARGE'}, "
              f"tolerance {DEFAULT_ATOL:g})")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
