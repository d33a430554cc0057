"""The README's library example runs as written (the first python block under "The `dsa` package")."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_library_example_runs():
    text = README.read_text()
    section = text[text.index("## The `dsa` package"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    assert "ops.sparse_attention" in code and "DSAAttention" in code
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 (our own README)
    assert namespace["y"].shape == (1, 96, 256) and namespace["aux"].selection.shape == (1, 96, 16)


def test_the_readme_inference_example_runs():
    text = README.read_text()
    section = text[text.index("## Inference"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    assert "init_cache" in code and "generate(" in code
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 (our own README)
    assert namespace["cache"].lengths.tolist() == [11, 8]
    assert [len(t) for t in namespace["out"].tokens] == [20, 20]
