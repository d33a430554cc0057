"""Every numbered notebook runs end to end through papermill with the small (CPU) parameters, and bad
parameters stop a notebook in its first cells with an error naming the parameter.

The notebooks are found at collection time (notebooks/[0-9][0-9]_*.ipynb), so a new notebook is tested
as soon as it exists. Figures go to a temporary folder, never to figures/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from dsa.study import report
from dsa.study.notebook_params import (
    NotebookParameterError,
    between,
    check_params,
    one_of,
    snapshot_namespace,
    validate_params,
)

NOTEBOOKS = report.find_notebooks()
SMALL = report.load_params_file(report.params_path("small"))
FIRST_CELLS = 6  # a parameter error must surface within the first cells (title, imports, params, injected, check)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _run(nb_path: Path, tmp_path: Path, parameters: dict) -> tuple[bool, str, int | None, Path]:
    out = tmp_path / f"{nb_path.stem}.ipynb"
    env = report.kernel_env(records_log=tmp_path / "records.jsonl", figures_dir=tmp_path / "figures")
    ok, err, cell = report.execute_notebook(nb_path, out, parameters, env=env, cell_timeout=600)
    return ok, err, cell, out


def _error_output(out: Path) -> tuple[int, str]:
    """(index of the first code cell holding an error output, 'ename: evalue')."""
    nb = nbformat.read(str(out), as_version=4)
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if o.output_type == "error":
                return i, f"{o.ename}: {o.evalue}"
    raise AssertionError("no error output in the executed notebook")


def test_notebooks_found():
    assert NOTEBOOKS, "no notebooks/[0-9][0-9]_*.ipynb found"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_with_small_params(nb_path: Path, tmp_path: Path):
    params = report.notebook_parameters(nb_path, SMALL)
    ok, err, cell, out = _run(nb_path, tmp_path, params)
    assert ok, f"{nb_path.name} failed with the small parameters at {err}"
    nb = nbformat.read(str(out), as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    # every static figure it saved passed dsa.study.figcheck (no overlapping labels, NaN cells, out-of-bound intervals)
    checks = sorted((tmp_path / "figures").glob("*.check.json"))
    problems = {c.name: json.loads(c.read_text())["problems"] for c in checks}
    assert not {k: v for k, v in problems.items() if v}, problems
    # no NaN shown in a table (an HTML table cell holding only NaN / None / <NA>)
    nan_tables = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" for o in c.get("outputs", [])
                  if re.search(r"<td>\s*(NaN|nan|None|&lt;NA&gt;)\s*</td>",
                               str(o.get("data", {}).get("text/html", "")))]
    assert not nan_tables, f"NaN shown in the tables of cells {nan_tables}"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs_and_paired(nb_path: Path):
    nb = nbformat.read(str(nb_path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, f"{nb_path.name} holds outputs"
    assert "py:percent" in nb.metadata.get("jupytext", {}).get("formats", ""), "not paired with a percent .py"
    assert nb_path.with_suffix(".py").is_file()
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_unknown_parameter_stops_in_first_cells(nb_path: Path, tmp_path: Path):
    ok, err, cell, out = _run(nb_path, tmp_path, {"no_such_parameter": 3})
    assert not ok
    idx, msg = _error_output(out)
    assert "NotebookParameterError" in msg and "no_such_parameter" in msg, msg
    assert idx < FIRST_CELLS + 1, f"the error surfaced only in cell {idx}"  # +1: papermill's error banner cell


# Notebook-specific invalid values: (parameters, the name the error must mention).
INVALID = {
    "01_indexer_math": [
        ({"seq_len": 64, "top_k": 65}, "top_k"),  # k > L
        ({"top_k": 0}, "top_k"),  # k < 1
        ({"top_k": "8"}, "top_k"),  # wrong type
        ({"device": "tpu"}, "device"),
    ],
    "02_sparse_vs_dense": [
        ({"fresh_seq_lens": "100"}, "fresh_seq_lens"),  # not one of exp4's L
        ({"fresh_seeds": "7"}, "fresh_seeds"),
        ({"fresh_steps": -1}, "fresh_steps"),
        ({"confidence": 1.5}, "confidence"),
    ],
    "03_sparsity_sweep": [
        ({"fresh_ratios": "0.4"}, "fresh_ratios"),  # not one of exp5's ratios
        ({"fresh_seq_lens": "64,4096"}, "fresh_seq_lens"),
        ({"alpha": 0.0}, "alpha"),
        ({"fresh_seeds": "x"}, "fresh_seeds"),
    ],
    "04_adaptive_k": [
        ({"k_min": 200}, "k_min"),  # above the k cap (0.75 L = 96 at the small size)
        ({"mass_levels": "0.5,1.5"}, "mass_levels"),
        ({"analysis_batches": 0}, "analysis_batches"),
        ({"fresh_size": "huge"}, "fresh_size"),
    ],
    "05_efficiency": [
        ({"bench_seq_lens": "128,256", "bench_top_k": "512"}, "bench_top_k"),  # k > L
        ({"bench_kv_heads": "3"}, "bench_kv_heads"),  # does not divide bench_heads
        ({"plot_k": "L/4"}, "plot_k"),
        ({"bench_seq_lens": ""}, "bench_seq_lens"),
    ],
    "06_ablations": [
        ({"fresh_ablations": "kl,depth"}, "fresh_ablations"),  # not one of kl, warmup, heads
        ({"fresh_seeds": "2"}, "fresh_seeds"),  # the small size has seeds 0, 1
        ({"recorded_warmup": "/tmp/x.jsonl"}, "recorded_warmup"),  # not under data/
        ({"share_recorded": "yes"}, "share_recorded"),  # wrong type
    ],
    "07_inference": [
        ({"prompt_len": 250}, "prompt_len"),  # prompt + generation past max_seq_len
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"recorded": "../x.json"}, "recorded"),  # not under data/
    ],
    "08_long_context": [
        ({"fresh_seq_len": 100}, "fresh_seq_len"),  # not one of the small size's lengths
        ({"fresh_tasks": "recall,copy"}, "fresh_tasks"),
        ({"margin_loss": 0.0}, "margin_loss"),  # a margin must be positive
        ({"fresh_seeds": "9"}, "fresh_seeds"),
    ],
}


@pytest.mark.parametrize(
    "nb_path,params,name",
    [(p, prm, n) for p in NOTEBOOKS for prm, n in INVALID.get(p.stem, [])],
    ids=[f"{p.stem}-{json.dumps(prm)}" for p in NOTEBOOKS for prm, _ in INVALID.get(p.stem, [])],
)
def test_invalid_value_stops_in_first_cells(nb_path: Path, params: dict, name: str, tmp_path: Path):
    ok, err, cell, out = _run(nb_path, tmp_path, params)
    assert not ok
    idx, msg = _error_output(out)
    assert "NotebookParameterError" in msg and repr(name) in msg, msg
    assert idx < FIRST_CELLS + 1, f"the error surfaced only in cell {idx}"


# --------------------------------------------------------------------- the validation helper itself
def test_validate_params_messages():
    decl = {"seq_len": int, "top_k": int, "lr": float, "device": str, "flag": bool}
    good = {"seq_len": 64, "top_k": 8, "lr": 1, "device": "cpu", "flag": True}
    rules = {"top_k": between(1, "seq_len"), "device": one_of("cpu", "cuda")}
    p = validate_params(decl, good, rules)
    assert p.lr == 1.0 and isinstance(p.lr, float)
    for bad, text in [
        ({"top_k": 65}, "'top_k' = 65 is invalid: must be <= seq_len (=64)"),
        ({"top_k": 0}, "'top_k' = 0 is invalid: must be >= 1"),
        ({"top_k": True}, "'top_k' must be of type int"),
        ({"lr": "x"}, "'lr' must be of type float"),
        ({"device": "tpu"}, "'device' = 'tpu' is invalid"),
    ]:
        with pytest.raises(NotebookParameterError, match=text.replace("(", r"\(").replace(")", r"\)")):
            validate_params(decl, {**good, **bad}, rules)
    with pytest.raises(NotebookParameterError, match="unknown notebook parameter.*'bogus'"):
        validate_params(decl, good, rules, unknown=["bogus"])


def test_check_params_detects_injected_names_like_papermill():
    """Simulate the three cells in one namespace: snapshot, annotated parameters, papermill's injection."""
    import torch

    ns: dict = {"__name__": "__main__", "torch": torch}
    exec("from dsa.study.notebook_params import snapshot_namespace\n_before = snapshot_namespace(globals())", ns)
    exec("seq_len: int = 32\ntop_k: int = 4", ns)
    before = ns["_before"]
    assert vars(check_params(ns, before, {"top_k": between(1, "seq_len")})) == {"seq_len": 32, "top_k": 4}
    exec("top_k = 8\nunknown_one = 1\n_i5 = 'ipython history'", ns)  # injected cell (+ an IPython name)
    with pytest.raises(NotebookParameterError, match="'unknown_one'"):
        check_params(ns, before)
    del ns["unknown_one"]
    exec("torch = 3", ns)  # an injected name shadowing an existing global
    with pytest.raises(NotebookParameterError, match="'torch'"):
        check_params(ns, before)
    ns["torch"] = torch
    exec("top_k = 33", ns)
    with pytest.raises(NotebookParameterError, match="'top_k' = 33 is invalid: must be <= seq_len"):
        check_params(ns, before, {"top_k": between(1, "seq_len")})
    assert snapshot_namespace  # imported for the exec above


def test_report_parameters_filter_common_to_declared_names():
    nb = NOTEBOOKS[0]
    declared = report.declared_parameters(nb)
    params = report.notebook_parameters(nb, {"common": {"device": "cpu", "not_declared_anywhere": 1}})
    assert "not_declared_anywhere" not in params
    if "device" in declared:
        assert params["device"] == "cpu"


def test_setup_notebook_checks_then_sets_up(capsys):
    """The one setup call: parameters checked first (an unknown one stops it), then the device, the fresh-run
    label and the figure saver the notebook reads."""
    from dsa.study.setup import NotebookSetup, setup_notebook

    ns: dict = {}
    exec("from dsa.study.setup import snapshot_namespace\n_before = snapshot_namespace(globals())", ns)
    before = ns["_before"]
    ns["__annotations__"] = {"device": str, "save_figures": bool, "top_k": int}
    ns.update(device="cpu", save_figures=False, top_k=4)
    nb = setup_notebook(ns, before, "05_efficiency", {"top_k": between(1, 8)})
    assert isinstance(nb, NotebookSetup) and nb.device.type == "cpu" and vars(nb.params)["top_k"] == 4
    assert nb.fresh_label.startswith("fresh run on cpu")
    ns["typo"] = 1
    with pytest.raises(NotebookParameterError, match="typo"):
        setup_notebook(ns, before, "05_efficiency")
