"""ONNX export (dsa.inference.export): the graph on onnxruntime gives PyTorch's logits, and DSA's selection is
the reference's, position for position, at lengths other than the traced one; what cannot be exported says
why. Skipped where the onnx extra is not installed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[onnx]'): the export cannot be tested")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[onnx]')")

from dsa.inference.export import (  # noqa: E402
    DEFAULT_ATOL,
    export_onnx,
    logits_difference,
    main,
    run_onnx,
    why_not_exportable,
)
from dsa.layers import MLAConfig  # noqa: E402
from dsa.model import TransformerLM  # noqa: E402
from dsa.model.config import ModelConfig  # noqa: E402

SMALL = dict(vocab_size=101, d_model=48, n_layers=2, n_heads=4, max_seq_len=64, top_k=7, indexer_heads=4,
             indexer_dim=16, indexer_rope_dim=8)


def model_of(attention: str, seed: int = 0, **changes) -> TransformerLM:
    return TransformerLM(ModelConfig(**{**SMALL, "attention": attention, **changes}), seed=seed).eval()


def tokens(b: int, l: int, seed: int) -> torch.Tensor:
    return torch.randint(0, SMALL["vocab_size"], (b, l), generator=torch.Generator().manual_seed(seed))


def reference_selection(model: TransformerLM, t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([a.selection.long() for a in model(t).aux])


def has_ties_at_the_cut(model: TransformerLM, t: torch.Tensor) -> bool:
    """Whether some query's k-th and (k+1)-th best past scores are equal (where tie-breaking matters)."""
    from dsa.ops.indexer import indexer_scores_reference  # noqa: PLC0415

    x = model.embed(t)
    with torch.no_grad():
        for block in model.layers:
            qi, ki, wi = block.attn.indexer_outputs(block.attn_norm(x))
            s = indexer_scores_reference(qi, ki, wi).sort(-1, descending=True).values
            k = model.cfg.top_k
            if s.shape[-1] > k and bool(((s[..., k - 1] == s[..., k]) & s[..., k].isfinite()).any()):
                return True
            x, _ = block(x)
    return False


@pytest.mark.parametrize("layout", [{}, {"n_kv_heads": 1}, {"mla": MLAConfig(kv_rank=16, rope_dim=8, nope_dim=8,
                                                                              v_dim=8)}],
                         ids=["mha", "mqa", "mla"])
@pytest.mark.parametrize("attention", ["dense", "dsa"])
def test_onnxruntime_gives_the_pytorch_logits_at_other_lengths(tmp_path, attention, layout):
    model = model_of(attention, seed=3, **layout)
    path = export_onnx(model, tmp_path / "m.onnx", seq_len=11, batch_size=2)
    for b, l in ((2, 11), (1, 5), (3, 23), (1, 64)):  # the traced shape, shorter than k, longer, the context
        t = tokens(b, l, seed=l)
        assert logits_difference(model, path, t) <= DEFAULT_ATOL, (b, l)
    if attention == "dsa":  # the logits must depend on the selection: the same weights attending densely differ
        t = tokens(1, 23, seed=0)
        with torch.no_grad():
            diff = (model(t).logits - model(t, sparse=False).logits).abs().max()
        assert float(diff) > 100 * DEFAULT_ATOL


@pytest.mark.parametrize("indexer_heads", [16, 1], ids=["no-ties", "ReLU-ties"])
def test_the_exported_selection_is_the_reference_selection(tmp_path, indexer_heads):
    """Position for position, -1 slots included. With one indexer head a quarter or more of the scores are
    ReLU's exact zeros: the ties are broken by ONNX TopK (lower position first) as by the stable sort."""
    model = model_of("dsa", seed=1, indexer_heads=indexer_heads)
    path = export_onnx(model, tmp_path / "m.onnx", seq_len=9, with_selection=True)
    saw_ties = False
    for l in (9, 4, 31, 57):
        t = tokens(2, l, seed=100 + l)
        got = torch.from_numpy(run_onnx(path, t)[1])
        ref = reference_selection(model, t)  # min(k, L) wide; the graph's selection is k wide, -1 past L
        assert got.shape[-1] == model.cfg.top_k
        assert torch.equal(got, torch.nn.functional.pad(ref, (0, got.shape[-1] - ref.shape[-1]), value=-1)), l
        saw_ties |= has_ties_at_the_cut(model, t)
    assert saw_ties == (indexer_heads == 1)  # the two cases are what their names say


def test_a_static_export_and_the_dynamo_exporter(tmp_path):
    model = model_of("dsa", seed=2, n_layers=1)
    t = tokens(1, 12, seed=5)
    static = export_onnx(model, tmp_path / "static.onnx", seq_len=12, dynamic=False)
    assert logits_difference(model, static, t) <= DEFAULT_ATOL
    dyn = export_onnx(model, tmp_path / "dynamo.onnx", seq_len=12, dynamic=False, exporter="dynamo")
    assert logits_difference(model, dyn, t) <= DEFAULT_ATOL


@pytest.mark.parametrize("change, match", [
    (dict(impl="triton"), "impl='triton'"),
    (dict(k_policy="mass"), "adaptive k"),
    (dict(leak_future=True), "seeds' bug"),
    (dict(indexer_precision="fp8"), "no FP8 quantization"),
])
def test_what_cannot_be_exported_says_why(tmp_path, change, match):
    model = model_of("dsa", **change)
    with pytest.raises(ValueError, match=match):
        export_onnx(model, tmp_path / "m.onnx", seq_len=8)
    assert not (tmp_path / "m.onnx").exists()


def test_a_cuda_model_with_impl_auto_is_refused(monkeypatch):
    model = model_of("dsa")
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # no GPU needed to say why
    assert "impl='auto' runs the Triton kernels on CUDA" in why_not_exportable(model)


@pytest.mark.parametrize("kw, match", [
    (dict(seq_len=0), "seq_len must be a positive int"),
    (dict(seq_len=65), "max_seq_len"),
    (dict(seq_len=5), "must be >= top_k"),
    (dict(seq_len=8, exporter="jit"), "exporter must be one of"),
    (dict(seq_len=8, batch_size=True), "batch_size"),
])
def test_bad_arguments_are_refused_before_any_work(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        export_onnx(model_of("dsa"), tmp_path / "m.onnx", **kw)
    with pytest.raises(ValueError, match="TransformerLM"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "m.onnx", seq_len=4)


def test_cli_exports_a_checkpoint_and_checks_it(tmp_path, monkeypatch, capsys):
    model = model_of("dsa", seed=4)
    ckpt = tmp_path / "ck.pt"
    state = {"model_config": model.cfg.to_dict(), "state_dict": model.state_dict()}
    try:
        from dsa.train.checkpoints import save_checkpoint  # noqa: PLC0415
    except ImportError:  # before the checkpoints module exists: stand in for load_model with the same contract
        import dsa.inference.export as ex  # noqa: PLC0415

        torch.save(state, ckpt)
        monkeypatch.setattr(ex, "_load_model", lambda p: model_of("dsa", seed=4))
    else:
        save_checkpoint(ckpt, state)
    out = tmp_path / "cli.onnx"
    assert main(["--checkpoint", str(ckpt), "--output", str(out), "--check"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "onnxruntime vs PyTorch" in text and "(ok," in text


@pytest.mark.parametrize("argv, match", [
    (["--output", "x.onnx"], "required"),
    (["--checkpoint", "nope.pt", "--output", "x.onnx"], "--checkpoint: no file"),
    (["--checkpoint", __file__, "--output", "x.onnx", "--seq-len", "0"], "--seq-len must be >= 1"),
    (["--checkpoint", __file__, "--output", "x.onnx", "--exporter", "jit"], "invalid choice"),
    (["--checkpoint", __file__, "--output", "x.onnx"], ""),  # not a checkpoint (or no checkpoint reader yet)
])
def test_cli_bad_arguments_exit_2_with_an_error(tmp_path, argv, match):
    r = subprocess.run([sys.executable, "-m", "dsa.inference.export", *argv], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 2 and "error:" in r.stderr and match in r.stderr and "Traceback" not in r.stderr
