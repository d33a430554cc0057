"""Build the report: execute every ``notebooks/[0-9][0-9]_*.ipynb`` with papermill from a parameters file,
keep the executed copies, convert them to HTML (plotly figures render offline), and write an index page.

    python -m dsa.report [--params small|full|PATH.yaml] [--only NAME ...] [--out report/]

Nothing is re-used: every notebook is executed again and its executed copy and HTML are overwritten. What
a notebook read from recorded data (``dsa.records.load_records``) is listed per notebook, as are the static
figures it wrote (``dsa.figures.save_static``, to ``figures/`` unless ``--figures DIR``). A failing notebook
is reported with its failing cell; the others still run; the command exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import copy
import html
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .provenance import REPO_ROOT

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
PARAMS_DIR = NOTEBOOKS_DIR / "params"
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


# ------------------------------------------------------------------------------------------ discovery
def find_notebooks(only: list[str] | None = None, root: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The numbered notebooks, sorted; ``only``: names (stem) or prefixes ('01') to keep."""
    nbs = sorted(root.glob(NOTEBOOK_GLOB))
    if only:
        keep = [p for p in nbs if any(p.stem == o or p.stem.startswith(o) or p.name == o for o in only)]
        missing = [o for o in only if not any(p.stem == o or p.stem.startswith(o) or p.name == o for p in nbs)]
        if missing:
            raise SystemExit(f"--only: no notebook matches {missing}; found {[p.stem for p in nbs]}")
        nbs = keep
    return nbs


def params_path(params: str) -> Path:
    """'small' / 'full' -> notebooks/params/<name>.yaml; anything else is a path."""
    p = PARAMS_DIR / f"{params}.yaml" if params in ("small", "full") else Path(params)
    if not p.is_file():
        raise SystemExit(f"parameters file {p} does not exist")
    return p


def load_params_file(path: Path) -> dict[str, dict]:
    import yaml  # noqa: PLC0415

    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) or v is None for v in data.values()):
        raise SystemExit(f"{path}: expected a mapping of sections (common, <notebook stem>) to mappings")
    return {k: dict(v or {}) for k, v in data.items()}


def declared_parameters(nb_path: Path) -> dict[str, Any]:
    """The parameters the notebook's ``parameters`` cell declares (papermill's own inspection)."""
    import papermill as pm  # noqa: PLC0415

    return pm.inspect_notebook(str(nb_path))


def notebook_parameters(nb_path: Path, sections: dict[str, dict]) -> dict[str, Any]:
    """``common`` values for the names this notebook declares, then its own section (passed as given: a
    name it does not declare makes the notebook stop with an error naming it)."""
    declared = declared_parameters(nb_path)
    params = {k: v for k, v in sections.get("common", {}).items() if k in declared}
    params.update(sections.get(nb_path.stem, {}))
    return params


def kernel_env(records_log: Path | None = None, figures_dir: Path | None = None) -> dict[str, str]:
    """Environment for the kernel: the repository on PYTHONPATH (the package need not be installed)."""
    env = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if records_log is not None:
        env["DSA_RECORDS_LOG"] = str(records_log)
    if figures_dir is not None:
        env["DSA_FIGURES_DIR"] = str(figures_dir)
    return env


# ------------------------------------------------------------------------------------------ execution
@dataclass
class NotebookResult:
    name: str
    ok: bool
    seconds: float
    parameters: dict
    executed: Path | None = None
    html: Path | None = None
    error: str = ""
    failed_cell: int | None = None  # index in the executed notebook
    records_read: list[dict] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)


def execute_notebook(
    nb_path: Path,
    out_path: Path,
    parameters: dict,
    *,
    env: dict[str, str] | None = None,
    cell_timeout: int | None = None,
    kernel_name: str = "python3",
) -> tuple[bool, str, int | None]:
    """Run one notebook with papermill; returns (ok, error text, failing cell index)."""
    import papermill as pm  # noqa: PLC0415
    from papermill.exceptions import PapermillExecutionError  # noqa: PLC0415

    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        pm.execute_notebook(
            str(nb_path), str(out_path), parameters=parameters, cwd=str(nb_path.parent), kernel_name=kernel_name,
            progress_bar=False, log_output=False, execution_timeout=cell_timeout,
        )
        return True, "", None
    except PapermillExecutionError as e:
        first = (e.source or "").strip().splitlines()
        where = f"cell {e.cell_index} (execution count {e.exec_count})"
        return False, f"{where}: {e.ename}: {e.evalue}" + (f"  [cell starts: {first[0][:80]}]" if first else ""), e.cell_index
    except Exception as e:  # kernel death, bad parameters file, ...
        return False, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}", None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------------------ HTML
def prepare_for_html(nb: Any) -> Any:
    """A copy of an executed notebook fit for a static page: plotly figures become HTML divs (plotly.js is
    loaded once by the page), live widgets become a note, and the widget state (which would pull the
    widget manager from a CDN) is dropped."""
    import plotly.io as pio  # noqa: PLC0415

    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            data = out.get("data")
            if not data:
                continue
            if PLOTLY_MIME in data:
                fig = data[PLOTLY_MIME]
                fig = json.loads(fig) if isinstance(fig, str) else fig
                div = pio.to_html(fig, include_plotlyjs=False, full_html=False, config={"responsive": True})
                out["data"] = {"text/html": div}
            elif WIDGET_MIME in data:
                out["data"] = {"text/html": "<div style='padding:6px;border:1px dashed #999;color:#555'>Interactive "
                               "widget: open the notebook in JupyterLab to use it (a static snapshot follows where "
                               "the notebook provides one).</div>"}
    return nb


def notebook_to_html(executed: Path, html_path: Path, plotly_js_rel: str, banner: str = "") -> Path:
    import nbformat  # noqa: PLC0415
    from nbconvert import HTMLExporter  # noqa: PLC0415

    nb = prepare_for_html(nbformat.read(str(executed), as_version=4))
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    # plotly.js first in <head>: loaded before require.js, it defines window.Plotly (after require.js it
    # would register as an AMD module instead and the figure divs, which call window.Plotly, would stay empty)
    tag = f'<script src="{plotly_js_rel}" charset="utf-8"></script>'
    i = body.find(">", body.find("<head")) + 1
    body = body[:i] + "\n" + tag + body[i:]
    if banner:
        i = body.find(">", body.find("<body")) + 1
        body = body[:i] + banner + body[i:]
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(body, encoding="utf-8")
    return html_path


def write_plotly_js(out_dir: Path) -> Path:
    from plotly.offline import get_plotlyjs  # noqa: PLC0415

    p = out_dir / "plotly.min.js"
    p.write_text(get_plotlyjs(), encoding="utf-8")
    return p


def write_index(out_dir: Path, results: list[NotebookResult], params_file: Path, figures_dir: Path) -> Path:
    rows = []
    for r in results:
        status = "<span style='color:#2a2'>ok</span>" if r.ok else f"<span style='color:#c22'>FAILED</span><br><small>{html.escape(r.error)}</small>"
        link = f"<a href='{r.html.relative_to(out_dir)}'>{r.name}</a>" if r.html else html.escape(r.name)
        exe = f"<a href='{r.executed.relative_to(out_dir)}'>executed .ipynb</a>" if r.executed else ""
        recs = "<br>".join(html.escape(f"{x['path']} ({x.get('provenance', {}).get('device', '?')}, commit "
                                       f"{str(x.get('provenance', {}).get('git_commit', '?'))[:7]})") for x in r.records_read)
        figs = "<br>".join(
            f"<a href='{html.escape(os.path.relpath(figures_dir / f, out_dir))}'>{html.escape(f)}</a>" for f in r.figures)
        params = html.escape(json.dumps(r.parameters))
        rows.append(f"<tr><td>{link}<br><small>{exe}</small></td><td>{status}</td><td>{r.seconds:.1f} s</td>"
                    f"<td><small>{params}</small></td><td><small>{recs or 'none: every figure from this run'}</small></td>"
                    f"<td><small>{figs}</small></td></tr>")
    from .records import fresh_run_label  # noqa: PLC0415

    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>DSA study report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:6px;vertical-align:top;text-align:left}}</style></head><body>
<h1>DeepSeek Sparse Attention study: report</h1>
<p>Built {time.strftime('%Y-%m-%d %H:%M:%S %Z')} with parameters <code>{html.escape(str(params_file))}</code>;
report process: {html.escape(fresh_run_label('cpu'))}. Every notebook was executed for this report (nothing re-used).</p>
<table><tr><th>notebook</th><th>status</th><th>time</th><th>parameters passed</th><th>recorded data read</th>
<th>static figures written</th></tr>
{''.join(rows)}
</table></body></html>"""
    p = out_dir / "index.html"
    p.write_text(page, encoding="utf-8")
    return p


# ------------------------------------------------------------------------------------------ main
def run_report(
    params: str = "small",
    only: list[str] | None = None,
    out: Path = REPO_ROOT / "report",
    figures_dir: Path | None = None,
    cell_timeout: int | None = None,
) -> list[NotebookResult]:
    from tqdm import tqdm  # noqa: PLC0415

    from .figures import figures_dir as default_figures_dir  # noqa: PLC0415

    out = Path(out).resolve()
    pfile = params_path(params)
    sections = load_params_file(pfile)
    notebooks = find_notebooks(only)
    if not notebooks:
        raise SystemExit(f"no notebook matches {NOTEBOOK_GLOB} under {NOTEBOOKS_DIR}")
    stems = {p.stem for p in find_notebooks()}
    for sec in sections:
        if sec != "common" and sec not in stems:
            print(f"warning: {pfile.name} has a section {sec!r} but there is no notebook {sec}.ipynb", file=sys.stderr)
    fig_dir = Path(figures_dir).resolve() if figures_dir else default_figures_dir()
    for sub in ("executed", "html", "logs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    plotly_js = write_plotly_js(out)
    print(f"report: {len(notebooks)} notebook(s), parameters {pfile}, output {out}, static figures -> {fig_dir}")
    print("report: every notebook is executed again; executed copies and HTML pages are overwritten (nothing re-used)")

    results = []
    for nb_path in tqdm(notebooks, desc="notebooks", unit="nb", file=sys.stdout):
        name = nb_path.stem
        try:
            parameters = notebook_parameters(nb_path, sections)
        except Exception as e:  # noqa: BLE001
            parameters = {}
            tqdm.write(f"{name}: could not read its parameters: {e}")
        own = set(sections.get(name, {}))
        tqdm.write(f"{name}: running with {json.dumps(parameters)}"
                   + ("" if own else f" (no section for it in {pfile.name}: notebook defaults otherwise)"))
        executed = out / "executed" / f"{name}.ipynb"
        log = out / "logs" / f"{name}.records.jsonl"
        log.write_text("")
        t0 = time.time()
        ok, err, cell = execute_notebook(nb_path, executed, parameters, env=kernel_env(log, figures_dir and fig_dir),
                                         cell_timeout=cell_timeout)
        dt = time.time() - t0
        recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        figs = sorted(p.name for p in fig_dir.glob("*") if p.is_file() and p.stat().st_mtime >= t0 - 1) if fig_dir.is_dir() else []
        res = NotebookResult(name, ok, dt, parameters, executed if executed.exists() else None, error=err,
                             failed_cell=cell, records_read=recs, figures=figs)
        if recs:
            tqdm.write(f"{name}: read recorded data: " + ", ".join(
                f"{r['path']} ({r.get('provenance', {}).get('device', '?')})" for r in recs))
        else:
            tqdm.write(f"{name}: read no recorded data (every figure comes from this run)")
        if figs:
            tqdm.write(f"{name}: wrote figures: {', '.join(figs)}")
        if res.executed:
            status = "ok" if ok else "FAILED"
            banner = (f"<div style='padding:8px;background:{'#eef8ee' if ok else '#fbeaea'};font-family:sans-serif'>"
                      f"<b>{html.escape(name)}</b>: {status} in {dt:.1f} s, parameters "
                      f"<code>{html.escape(json.dumps(parameters))}</code> from {html.escape(pfile.name)}"
                      f"{'<br>' + html.escape(err) if err else ''} · <a href='../index.html'>index</a></div>")
            try:
                res.html = notebook_to_html(executed, out / "html" / f"{name}.html",
                                            os.path.relpath(plotly_js, out / "html"), banner)
            except Exception as e:  # noqa: BLE001
                res.ok = False
                res.error = (res.error + "; " if res.error else "") + f"HTML conversion failed: {type(e).__name__}: {e}"
        tqdm.write(f"{name}: {'ok' if res.ok else 'FAILED: ' + res.error} ({dt:.1f} s)")
        results.append(res)

    index = write_index(out, results, pfile, fig_dir)
    failed = [r for r in results if not r.ok]
    print(f"\nreport: {len(results) - len(failed)}/{len(results)} notebook(s) ok; index: {index}")
    for r in failed:
        print(f"  FAILED {r.name}: {r.error}")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dsa.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="small", help="small (CPU), full (GPU) or a YAML path (default: small)")
    ap.add_argument("--only", action="append", metavar="NAME",
                    help="run only this notebook (stem or prefix, e.g. 01); repeatable")
    ap.add_argument("--out", default=str(REPO_ROOT / "report"), help="output folder (default: report/)")
    ap.add_argument("--figures", default=None, help="folder for static figures (default: figures/ or $DSA_FIGURES_DIR)")
    ap.add_argument("--cell-timeout", type=int, default=None, help="seconds per cell before it fails (default: none)")
    a = ap.parse_args(argv)
    results = run_report(a.params, a.only, Path(a.out), Path(a.figures) if a.figures else None, a.cell_timeout)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
