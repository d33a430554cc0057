"""The install's promise: the core (torch, numpy) is all the layer needs. In a fresh interpreter every module
of every extra in pyproject.toml is made absent, and the layer, the model and the inference package are
imported and run; the kernel tests skip with a reason where triton is missing (tests/ops)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")

ROOT = Path(__file__).resolve().parents[1]
CORE = {"torch", "numpy"}
# distribution name -> the module it installs, where the two differ
MODULE_OF = {"pyyaml": "yaml"}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req.strip(), maxsplit=1)[0].lower()


def extra_modules() -> set[str]:
    """Every module an extra installs (self-references such as dsa-study[train] left out)."""
    names = {requirement_name(r) for reqs in project()["optional-dependencies"].values() for r in reqs}
    names.discard(project()["name"])
    return {MODULE_OF.get(n, n.replace("-", "_")) for n in names} | {"IPython"}  # what jupyter pulls in


def test_the_core_is_torch_and_numpy_and_every_extra_is_in_all():
    p = project()
    assert {requirement_name(r) for r in p["dependencies"]} == CORE
    extras = p["optional-dependencies"]
    assert set(extras) >= {"train", "study", "onnx", "test", "all"}
    assert extras["all"] == [f"{p['name']}[study,train,onnx,test]"]
    # triton has wheels for Linux only: anywhere else the install must still succeed
    assert all("sys_platform == \"linux\"" in r for reqs in extras.values() for r in reqs
               if requirement_name(r) == "triton")


def test_the_layer_model_and_inference_import_and_run_without_any_extra():
    blocked = sorted(extra_modules())
    assert {"pandas", "tqdm", "tokenizers", "onnx", "triton", "yaml", "matplotlib"} <= set(blocked)
    code = textwrap.dedent(f"""
        import sys
        BLOCKED = {blocked!r}
        for name in BLOCKED:  # what Python does for an absent module: import raises, find_spec says None
            sys.modules[name] = None
        import torch
        import dsa, dsa.ops, dsa.layers, dsa.model, dsa.inference, dsa.inference.export
        from dsa.layers import AttentionConfig, DSAAttention, SparseConfig
        from dsa.model import TransformerLM
        from dsa.model.config import ModelConfig

        layer = DSAAttention(AttentionConfig(d_model=32, n_heads=4, n_kv_heads=1, head_dim=8, max_seq_len=16),
                             SparseConfig(top_k=4, indexer_heads=2, indexer_dim=8, indexer_rope_dim=4))
        y, aux = layer(torch.randn(2, 13, 32), indexer_loss="sparse")
        y.sum().backward()
        lm = TransformerLM(ModelConfig(vocab_size=50, d_model=32, max_seq_len=16, attention="dsa", top_k=4))
        logits = lm(torch.randint(0, 50, (1, 11))).logits
        assert y.shape == (2, 13, 32) and logits.shape == (1, 11, 50) and bool(logits.isfinite().all())
        loaded = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in BLOCKED)
        print("extras loaded:", loaded)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "extras loaded: []" in r.stdout
