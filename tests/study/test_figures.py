"""Static figures and the report pages, checked mechanically: dsa.study.figcheck finds overlapping labels, NaN
cells and intervals past a physical bound; the notebook figures built from the recorded GPU data show every
arm and pass the checks; the report's pages render formulas offline, hide the code on the reading page, and
the index lists every notebook with links that stay inside the report folder."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from dsa.records import data_dir  # noqa: E402
from dsa.study import figcheck as C  # noqa: E402
from dsa.study import report as R  # noqa: E402
from dsa.study import verdicts as V  # noqa: E402
from dsa.study.analysis import fixed_mean_k  # noqa: E402
from dsa.study.figures import adaptive_tradeoff_figure, clipped_errors, heatmap_pair_figure  # noqa: E402
from dsa.study.runs import recorded_runs, runs_table  # noqa: E402
from dsa.study.tables import nan_cells, readable  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


# ------------------------------------------------------------------------------------------ the checker
def test_checker_finds_overlapping_labels_nan_cells_and_intervals_below_zero():
    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    axes[0].plot([0, 1], [0, 1])
    axes[0].text(0.5, 0.5, "one label here")
    axes[0].text(0.5, 0.5, "another label")
    axes[1].imshow(np.array([[1.0, np.nan], [2.0, 3.0]]))
    axes[1].set_title("with a hole")
    axes[2].errorbar([0, 1], [0.4, 2.0], yerr=[4.8, 0.1], fmt="o")
    axes[2].set_ylabel("time per step (ms)")
    problems = C.check_figure(fig)
    assert any("overlap" in p and "one label here" in p for p in problems), problems
    assert any("NaN" in p and "with a hole" in p for p in problems), problems
    assert any("below the bound 0" in p for p in problems), problems


def test_checker_passes_a_clean_figure_and_reads_bounds_from_labels():
    fig, ax = plt.subplots(figsize=(5, 3))
    lo, hi = clipped_errors([0.4, 2.0], [4.8, 0.1], V.metric_bounds("sparse_time_per_step_s"))
    ax.errorbar([0, 1], [0.4, 2.0], yerr=[lo, hi], fmt="o")
    ax.set(ylabel="time per step (ms)", xlabel="arm")
    assert C.check_figure(fig) == []
    assert C.axis_bounds("val accuracy (%)") == (0.0, 100.0)
    assert C.axis_bounds("indexer recall (fraction of dense mass)") == (0.0, 1.0)
    assert C.axis_bounds("loss − dense loss (nats/token)") == (None, None)


def test_readable_tables_have_no_nan():
    df = pd.DataFrame({"dense": [4.26, 4.45], "DSA scratch": [4.335, np.nan], "n": [3, 1]})
    out = readable(df, 3, na={"DSA scratch": "n/a (not run)"})
    assert nan_cells(out) == 0 and out["DSA scratch"].iloc[1] == "n/a (not run)" and out["dense"].iloc[0] == 4.26


# ------------------------------------------------------------------------------ notebook figures, recorded data
def _recorded(pattern):
    if not list(data_dir().glob(pattern)):
        pytest.skip(f"no recorded data {pattern}")
    return recorded_runs(pattern)


def test_adaptive_tradeoff_shows_every_arm_of_the_recorded_sweep():
    df = runs_table(_recorded("gpu/exp3_adaptive.jsonl"), "recorded")
    df["keys"] = [fixed_mean_k(int(r.seq_len), int(r.top_k)) / r.seq_len if r.attention == "dsa" and
                  r.k_policy == "fixed" else ((r.seq_len + 1) / 2 / r.seq_len if r.attention == "dense" else np.nan)
                  for r in df.itertuples()]
    pts = df.groupby("arm").agg(loss=("val_loss", "mean"), loss_sd=("val_loss", "std"), keys=("keys", "mean"),
                                ms=("sparse_time_per_step_s", "mean")).reset_index()
    pts["kind"] = np.where(pts.arm == "dense", "dense",
                           np.where(pts.arm.str.startswith("fixed"), "fixed k", "adaptive k"))
    caps = df.groupby("arm").apply(lambda g: fixed_mean_k(int(g.seq_len.iloc[0]), int(g.top_k.iloc[0]))
                                   / int(g.seq_len.iloc[0]), include_groups=False)
    pts["keys_max"] = pts.arm.map(caps)
    assert pts.loc[pts.kind == "adaptive k", "keys"].isna().all(), "the recorded sweep was expected to lack them"
    arms = list(pts.arm)
    fig = adaptive_tradeoff_figure(pts, arms, "recorded exp3")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    for arm in arms:  # every arm has a legend entry and a finite point
        assert any(t.startswith(arm) for t in legend), (arm, legend)
    xs = [x for line in fig.axes[0].lines for x in np.asarray(line.get_xdata(), float)]
    assert len(xs) >= len(arms) and np.isfinite(xs).all()
    assert C.check_figure(fig) == []


def test_sparsity_heatmap_of_the_recorded_sweep_with_a_missing_cell():
    df = runs_table(_recorded("gpu/exp5_sparsity.jsonl"), "recorded")
    df["k/L"] = np.where(df.attention == "dense", "dense", df.ratio.map(lambda r: f"{r:g}"))
    mean = df.groupby(["seq_len", "k/L"]).val_loss.mean().unstack()
    mean.iloc[0, 0] = np.nan  # a configuration not run
    diff = mean.sub(mean["dense"], axis=0)
    fig = heatmap_pair_figure(mean, diff, "recorded exp5")
    assert C.check_figure(fig) == []
    assert sum("not run" in t.get_text() for t in fig.axes[0].texts) == 1


# ------------------------------------------------------------------------------------------ report pages
def _executed_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 99 · Title\n\nFirst paragraph with $I[t,s]$.\n\n$$\\sum_j w_j$$\n\n"
                                              "Code `$x$` stays."),
                nbformat.v4.new_code_cell("print('hello')\nSECRET_CODE_LINE = 1", outputs=[
                    nbformat.v4.new_output("stream", name="stdout", text="hello\n")])]
    nbformat.write(nb, str(path))
    return path


def test_report_pages_index_and_links_stay_inside(tmp_path):
    out = tmp_path / "report"
    (out / "html").mkdir(parents=True)
    (out / "figures").mkdir()
    js = R.write_plotly_js(out)
    nbs = []
    for name in ("01_a", "02_b"):
        src = _executed_notebook(tmp_path / f"{name}.ipynb")
        nbs.append(src)
    # only 01_a is built (as by --only 01): the index still lists 02_b, with how to build it
    page = R.notebook_to_html(nbs[0], out / "html" / "01_a.html", "../plotly.min.js", code=False)
    code = R.notebook_to_html(nbs[0], out / "html" / "01_a.code.html", "../plotly.min.js", code=True)
    (out / "figures" / "01_a_fig.png").write_bytes(b"png")
    res = R.NotebookResult("01_a", True, 1.0, {}, executed=None, html=page, code_html=code, figures=["01_a_fig.png"])
    R.save_status(out, res, Path("small.yaml"))
    index = R.write_index(out, nbs).read_text()
    assert "01_a.html" in index and "01_a.code.html" in index and "python -m dsa.study.report --only 02_b" in index
    text = page.read_text()
    assert "SECRET_CODE_LINE" not in text and "hello" in text  # code hidden, output kept
    assert "SECRET_CODE_LINE" in code.read_text()
    assert "<math" in text and "$$" not in text and "$I[t,s]$" not in text and "$x$" in text
    assert not re.findall(r'<script[^>]+src="https?://', text), "a page loads a script from the network"
    # every local link of the index and the pages resolves inside the report folder
    for f, html in ((out / "index.html", index), (page, text)):
        for ref in re.findall(r"(?:href|src)=['\"]([^'\"#]+)['\"]", html):
            if ref.startswith(("http:", "https:", "data:", "mailto:")):
                continue
            target = (f.parent / ref).resolve()
            assert target.is_relative_to(out.resolve()), f"{f.name} links outside the report: {ref}"
            assert target.exists(), f"{f.name} links to a missing file: {ref}"
    assert js.is_file()


# ------------------------------------------------------------------------------------------ CPU-run scope
def test_scope_box_and_checks_follow_the_numbers():
    from dsa.study.scope import fresh_run_scope, kl_recall_check, leak_check

    box = fresh_run_scope("03_sparsity_sweep", size="small", device="cpu", steps=20)
    assert "**can**" in box and "**cannot**" in box and "exp5_sparsity.jsonl" in box
    assert fresh_run_scope("03_sparsity_sweep", size="full", device="cuda") == ""
    row = {"dense": 4.2, "leaky": 1.0, "leaky, causal guard on at eval": 7.0}
    assert leak_check(row).startswith("**This run shows the leak**")
    assert "does not show" in leak_check({**row, "leaky": 4.3})
    df = pd.DataFrame({"arm": ["KL on (warm-up 5)"] * 2 + ["KL off (indexer untrained)"] * 2,
                       "recall": [0.7, 0.72, 0.5, 0.52]})
    assert "shows what the KL loss does" in kl_recall_check(df)
    assert "does not separate" in kl_recall_check(df.assign(recall=[0.5, 0.72, 0.6, 0.52]))
