"""The README's key figures are redrawn from the recorded data (dsa.study.readme_figures): every figure passes
the mechanical checks, stays small, and is the one the README embeds."""

from __future__ import annotations

import json
import re

import matplotlib

matplotlib.use("Agg")

from dsa.provenance import REPO_ROOT  # noqa: E402
from dsa.study.readme_figures import FIGURES, README_DIR, write_readme_figures  # noqa: E402

MAX_BYTES = 150 * 1024


def test_the_readme_figures_regenerate_checked_and_small(tmp_path):
    paths = write_readme_figures(tmp_path)
    assert set(paths) == set(FIGURES)
    for name, path in paths.items():
        assert path.is_file() and 10_000 < path.stat().st_size < MAX_BYTES, (name, path.stat().st_size)
        assert json.loads(path.with_suffix(".check.json").read_text())["problems"] == [], name


def test_the_readme_embeds_every_committed_figure():
    readme = (REPO_ROOT / "README.md").read_text()
    embedded = set(re.findall(r"figures/readme/([\w-]+)\.png", readme))
    assert embedded == set(FIGURES)
    for name in FIGURES:
        path = README_DIR / f"{name}.png"
        assert path.is_file() and path.stat().st_size < MAX_BYTES, name
