"""Build the report: execute every ``notebooks/[0-9][0-9]_*.ipynb`` with papermill from a parameters file,
keep the executed copies, convert them to HTML (plotly figures render offline), and write an index page.

    python -m dsa report [--params small|full|PATH.yaml] [--only NAME ...] [--out report/]

Nothing is re-used: every notebook is executed again and its executed copy and HTML are overwritten. What
a notebook read from recorded data (``dsa.records.load_records``) is listed per notebook, as are the static
figures it wrote (``dsa.study.figures.save_static``, to ``figures/`` unless ``--figures DIR``). A failing notebook
is reported with its failing cell; the others still run; the command exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import copy
import html
import json
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsa.cli import usage_errors
from dsa.provenance import REPO_ROOT

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
PARAMS_DIR = NOTEBOOKS_DIR / "params"
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
_TQDM = re.compile(r"\d+%\|")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


# ------------------------------------------------------------------------------------------ discovery
def find_notebooks(only: list[str] | None = None, root: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The numbered notebooks, sorted; ``only``: names (stem) or prefixes ('01') to keep."""
    nbs = sorted(root.glob(NOTEBOOK_GLOB))
    if only:
        keep = [p for p in nbs if any(p.stem == o or p.stem.startswith(o) or p.name == o for o in only)]
        missing = [o for o in only if not any(p.stem == o or p.stem.startswith(o) or p.name == o for p in nbs)]
        if missing:
            raise ValueError(f"--only: no notebook matches {missing}; found {[p.stem for p in nbs]}")
        nbs = keep
    return nbs


def params_path(params: str) -> Path:
    """'small' / 'full' -> notebooks/params/<name>.yaml; anything else is a path."""
    p = PARAMS_DIR / f"{params}.yaml" if params in ("small", "full") else Path(params)
    if not p.is_file():
        raise ValueError(f"--params: {params!r} is neither small, full nor a parameters file ({p} does not exist)")
    return p


def load_params_file(path: Path) -> dict[str, dict]:
    import yaml  # noqa: PLC0415

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"--params {path}: not valid YAML: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) or v is None for v in data.values()):
        raise ValueError(f"--params {path}: expected a mapping of sections (common, <notebook stem>) to mappings")
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
    code_html: Path | None = None
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
        return (False, f"{where}: {e.ename}: {e.evalue}" + (f"  [cell starts: {first[0][:80]}]" if first else ""),
                e.cell_index)
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
        # tqdm's text bars on stderr (the \r-rewritten lines of a run without widgets) say nothing afterwards
        # and tqdm's widget bars (in JupyterLab) neither: a progress bar means something only while it runs
        cell.outputs = [o for o in cell.get("outputs", []) if not (
            (o.get("output_type") == "stream" and o.get("name") == "stderr" and _TQDM.search(o.get("text", "")))
            or (WIDGET_MIME in (o.get("data") or {}) and _TQDM.search(str(o["data"].get("text/plain", "")))))]
        for out in cell.get("outputs", []):
            data = out.get("data")
            if not data:
                continue
            plain = str(data.get("text/plain", ""))
            if plain.startswith("namespace(") and len(data) == 1:  # the validated parameters: folded away
                data.clear()
                data["text/html"] = ("<details><summary>Parameters of this run</summary><pre>"
                                     f"{html.escape(plain)}</pre></details>")
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


# TeX in markdown: $$display$$ and $inline$, outside code spans and fenced code
_CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.S)
_MATH = re.compile(r"\$\$(.+?)\$\$|(?<![\\$])\$(?!\s)([^$\n]+?)(?<!\s)\$", re.S)


def tex_to_mathml(text: str) -> str:
    """Markdown with ``$$...$$`` / ``$...$`` TeX turned into MathML (latex2mathml), so formulas render offline
    in any current browser without MathJax. Code spans and fenced code are left alone; a formula that
    latex2mathml cannot convert stays as TeX source in a ``<code>`` span."""
    from latex2mathml.converter import convert  # noqa: PLC0415

    def one(m: re.Match) -> str:
        display = m.group(1) is not None
        tex = (m.group(1) if display else m.group(2)).strip()
        try:
            mml = convert(tex, display="block" if display else "inline").replace("\n", "")
        except Exception:  # noqa: BLE001
            return f"<code>{html.escape(tex)}</code>"
        return f"\n\n{mml}\n\n" if display else mml

    parts = _CODE.split(text)
    return "".join(part if i % 2 else _MATH.sub(one, part) for i, part in enumerate(parts))


def _math_offline(nb: Any) -> Any:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = tex_to_mathml(cell.source)
        elif cell.cell_type == "code":
            for out in cell.get("outputs", []):
                data = out.get("data") or {}
                if "text/markdown" in data:
                    data["text/markdown"] = tex_to_mathml(data["text/markdown"])
    return nb


def _strip_network_scripts(body: str) -> str:
    """Drop what a static page would fetch from the network: nbconvert's MathJax (the formulas are MathML
    now) and require.js (nothing on the page needs it: plotly.js is loaded from the report folder)."""
    a, b = body.find("<!-- Load mathjax -->"), body.find("<!-- End of mathjax configuration -->")
    if a != -1 and b != -1:
        body = body[:a] + body[b + len("<!-- End of mathjax configuration -->"):]
    return re.sub(r'<script src="https?://[^"]*require[^"]*"></script>', "", body)


PAGE_STYLE = """<style>
.jp-Notebook{max-width:1180px;margin:0 auto}
math[display="block"]{margin:0.6em 0;font-size:1.1em}
.dsa-banner{padding:8px 12px;font-family:sans-serif;font-size:14px;border-bottom:1px solid #ccc}
.dsa-banner a{margin-left:0.8em}
</style>"""


def notebook_to_html(executed: Path, html_path: Path, plotly_js_rel: str, banner: str = "", *,
                     code: bool = True) -> Path:
    """One static page of an executed notebook. ``code=False``: the narrative, figures and tables only
    (nbconvert's no-input mode), as a paper reads; ``code=True``: every cell with its code (the appendix)."""
    import nbformat  # noqa: PLC0415
    from nbconvert import HTMLExporter  # noqa: PLC0415

    nb = _math_offline(prepare_for_html(nbformat.read(str(executed), as_version=4)))
    exporter = HTMLExporter(template_name="lab")
    if not code:
        exporter.exclude_input = True
        exporter.exclude_input_prompt = True
        exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nb)
    body = _strip_network_scripts(body)
    # plotly.js first in <head>: loaded before any AMD loader, it defines window.Plotly, which the figure
    # divs call
    tag = f'<script src="{plotly_js_rel}" charset="utf-8"></script>\n{PAGE_STYLE}'
    i = body.find(">", body.find("<head")) + 1
    body = body[:i] + "\n" + tag + body[i:]
    if banner:
        i = body.find(">", body.find("<body")) + 1
        body = body[:i] + banner + body[i:]
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(body, encoding="utf-8")
    return html_path


def write_pages(out: Path, res: NotebookResult, params_name: str, plotly_js: Path) -> NotebookResult:
    """The two pages of one executed notebook (``res.executed``): ``html/NAME.html`` (the reading page, code
    hidden) and ``html/NAME.code.html`` (every cell with its code), each with a banner linking the other
    and the index. Sets ``res.html`` and ``res.code_html``; a conversion failure marks ``res`` failed."""
    name, status = res.name, "ok" if res.ok else "FAILED"
    params = html.escape(json.dumps(res.parameters))

    def banner(other: str, other_text: str) -> str:
        return (f"<div class='dsa-banner' style='background:{'#eef8ee' if res.ok else '#fbeaea'}'>"
                f"<b>{html.escape(name)}</b>: {status} in {res.seconds:.1f} s, parameters <code>{params}</code> "
                f"from {html.escape(params_name)}{'<br>' + html.escape(res.error) if res.error else ''}"
                f"<a href='../index.html'>index</a><a href='{other}'>{other_text}</a></div>")

    try:
        js = os.path.relpath(plotly_js, out / "html")
        res.html = notebook_to_html(res.executed, out / "html" / f"{name}.html", js,
                                    banner(f"{name}.code.html", "show the code"), code=False)
        res.code_html = notebook_to_html(res.executed, out / "html" / f"{name}.code.html", js,
                                         banner(f"{name}.html", "hide the code"), code=True)
    except Exception as e:  # noqa: BLE001
        res.ok = False
        res.error = (res.error + "; " if res.error else "") + f"HTML conversion failed: {type(e).__name__}: {e}"
    return res


def write_plotly_js(out_dir: Path) -> Path:
    from plotly.offline import get_plotlyjs  # noqa: PLC0415

    p = out_dir / "plotly.min.js"
    p.write_text(get_plotlyjs(), encoding="utf-8")
    return p


def notebook_summary(nb_path: Path) -> tuple[str, str]:
    """(title, first paragraph) of a notebook's first markdown cell, for the index."""
    import nbformat  # noqa: PLC0415

    nb = nbformat.read(str(nb_path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            lines = cell.source.strip().splitlines()
            title = lines[0].lstrip("#").strip() if lines and lines[0].startswith("#") else nb_path.stem
            paras = [x.strip() for x in "\n".join(lines[1:]).strip().split("\n\n") if x.strip()]
            keep: list[str] = []
            for para in paras:  # the opening paragraph, with what it announces when it ends with a colon
                keep.append(para)
                if not para.endswith(":") or len(keep) == 3:
                    break
            return title, "\n\n".join(keep)
    return nb_path.stem, ""


def status_path(out_dir: Path, name: str) -> Path:
    return out_dir / "status" / f"{name}.json"


def save_status(out_dir: Path, r: NotebookResult, params_file: Path) -> Path:
    """What the index shows for one notebook, kept next to its pages so that a later ``--only`` run of
    another notebook still lists this one (with when and how it was built)."""
    rel = lambda p: str(p.relative_to(out_dir)) if p else None  # noqa: E731
    data = {"name": r.name, "ok": r.ok, "seconds": r.seconds, "parameters": r.parameters, "error": r.error,
            "failed_cell": r.failed_cell, "executed": rel(r.executed), "html": rel(r.html),
            "code_html": rel(r.code_html), "records_read": r.records_read, "figures": r.figures,
            "params_file": params_file.name, "built": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    p = status_path(out_dir, r.name)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    return p


def write_index(out_dir: Path, notebooks: list[Path] | None = None) -> Path:
    """``index.html``: every numbered notebook, in order, with its latest page (whichever run built it),
    its code appendix, status, parameters, recorded data read and static figures; notebooks never built
    are listed with the command that builds them. Every link stays inside ``out_dir``."""
    import mistune  # noqa: PLC0415

    from dsa.records import fresh_run_label  # noqa: PLC0415

    notebooks = notebooks if notebooks is not None else find_notebooks()
    sections, rows = [], []
    for nb_path in notebooks:
        name = nb_path.stem
        title, para = notebook_summary(nb_path)
        para = mistune.html(tex_to_mathml(para))  # markdown and formulas, as on the pages
        sp = status_path(out_dir, name)
        st = json.loads(sp.read_text()) if sp.is_file() else None
        if st is None or not st.get("html") or not (out_dir / st["html"]).is_file():
            sections.append(f"<h2>{html.escape(title)}</h2>{para}<p class='missing'>Not built "
                            f"yet: <code>python -m dsa.study.report --only {html.escape(name)}</code></p>")
            rows.append(f"<tr><td>{html.escape(name)}</td><td>not built</td><td></td><td></td><td></td><td></td></tr>")
            continue
        ok = st["ok"]
        status = "<span class='ok'>ok</span>" if ok else (f"<span class='bad'>FAILED</span><br><small>"
                                                            f"{html.escape(st.get('error', ''))}</small>")
        links = (f"<a href='{html.escape(st['html'])}'>read</a>"
                 + (f" · <a href='{html.escape(st['code_html'])}'>with code</a>" if st.get("code_html") else "")
                 + (f" · <a href='{html.escape(st['executed'])}'>executed .ipynb</a>" if st.get("executed") else ""))
        figs = " ".join(f"<a href='figures/{html.escape(f)}'><img src='figures/{html.escape(f)}' alt='{html.escape(f)}'"
                        f" title='{html.escape(f)}'></a>" for f in st.get("figures", [])
                        if (out_dir / "figures" / f).is_file())
        sections.append(f"<h2><a href='{html.escape(st['html'])}'>{html.escape(title)}</a></h2>{para}"
                        f"<p><small>{links} · {status} · built {html.escape(st.get('built', '?'))} with "
                        f"{html.escape(st.get('params_file', '?'))}</small></p><div class='thumbs'>{figs}</div>")
        recs = "<br>".join(html.escape(f"{x['path']} ({x.get('provenance', {}).get('device', '?')}, commit "
                                       f"{str(x.get('provenance', {}).get('git_commit', '?'))[:7]})")
                           for x in st.get("records_read", []))
        figlinks = "<br>".join(f"<a href='figures/{html.escape(f)}'>{html.escape(f)}</a>"
                               for f in st.get("figures", []))
        rows.append(f"<tr><td><a href='{html.escape(st['html'])}'>{html.escape(name)}</a></td><td>{status}</td>"
                    f"<td>{st['seconds']:.1f} s<br><small>{html.escape(st.get('built', ''))}</small></td>"
                    f"<td><small>{html.escape(json.dumps(st.get('parameters', {})))}</small></td>"
                    f"<td><small>{recs or 'none: every figure from this run'}</small></td>"
                    f"<td><small>{figlinks}</small></td></tr>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>DSA study report</title>
<style>body{{font-family:sans-serif;margin:2em auto;max-width:1100px;line-height:1.45}}
table{{border-collapse:collapse;font-size:13px}}\
td,th{{border:1px solid #ccc;padding:6px;vertical-align:top;text-align:left}}
.ok{{color:#2a2}}.bad{{color:#c22}}.missing{{color:#a60}}.thumbs img{{height:110px;margin:2px;border:1px solid #ddd}}
h2{{margin-bottom:0.2em}}</style></head><body>
<h1>DeepSeek Sparse Attention study</h1>
<p>One page per notebook: narrative, figures, tables and verdicts; each page links its code ("with code", the
appendix) and the executed notebook. Figures computed in this report are small CPU runs and say so; the
conclusions come from the recorded GPU data each page names. Index written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}
by {html.escape(fresh_run_label('cpu'))}. This folder is self-contained: copy it as it is.</p>
{''.join(sections)}
<h2>Appendix: how each page was built</h2>
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
        raise ValueError(f"no notebook matches {NOTEBOOK_GLOB} under {NOTEBOOKS_DIR}")
    stems = {p.stem for p in find_notebooks()}
    for sec in sections:
        if sec != "common" and sec not in stems:
            print(f"warning: {pfile.name} has a section {sec!r} but there is no notebook {sec}.ipynb", file=sys.stderr)
    fig_dir = Path(figures_dir).resolve() if figures_dir else default_figures_dir()
    for sub in ("executed", "html", "logs", "status", "figures"):
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
        figs = sorted(p.name for p in fig_dir.glob("*.png") if p.stat().st_mtime >= t0 - 1) if fig_dir.is_dir() else []
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
            write_pages(out, res, pfile.name, plotly_js)
        for f in figs:  # copied in: the report folder must hold everything it links
            shutil.copy2(fig_dir / f, out / "figures" / f)
        save_status(out, res, pfile)
        tqdm.write(f"{name}: {'ok' if res.ok else 'FAILED: ' + res.error} ({dt:.1f} s)")
        results.append(res)

    index = write_index(out)
    failed = [r for r in results if not r.ok]
    print(f"\nreport: {len(results) - len(failed)}/{len(results)} notebook(s) ok; index: {index}")
    for r in failed:
        print(f"  FAILED {r.name}: {r.error}")
    return results


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="small", metavar="small|full|PATH.yaml",
                    help="parameters: small (CPU), full (GPU) or a YAML file of sections (default: small)")
    ap.add_argument("--only", action="append", metavar="NAME",
                    help="run only this notebook (stem or prefix, e.g. 01); repeatable")
    ap.add_argument("--out", default=str(REPO_ROOT / "report"), metavar="DIR",
                    help="output folder (default: report/)")
    ap.add_argument("--figures", default=None, metavar="DIR",
                    help="folder for static figures (default: figures/ or $DSA_FIGURES_DIR)")
    ap.add_argument("--cell-timeout", type=int, default=None, metavar="SECONDS",
                    help="seconds per cell before it fails, >= 1 (default: none)")
    return ap


def check_args(a: argparse.Namespace) -> None:
    """Every option before any notebook runs: the parameters file parses, each --only names a notebook,
    the folders are not files. ValueError naming the option."""
    load_params_file(params_path(a.params))
    find_notebooks(a.only)
    if a.cell_timeout is not None and a.cell_timeout < 1:
        raise ValueError(f"--cell-timeout must be >= 1 second, got {a.cell_timeout}")
    for flag, folder in (("--out", a.out), ("--figures", a.figures)):
        if folder and Path(folder).is_file():
            raise ValueError(f"{flag} must be a folder, got the file {folder!r}")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``python -m dsa report``: every notebook executed and converted; exit status 1 if one failed."""
    ap = build_parser(prog)
    a = ap.parse_args(argv)
    with usage_errors(ap):
        check_args(a)
    results = run_report(a.params, a.only, Path(a.out), Path(a.figures) if a.figures else None, a.cell_timeout)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(prog="python -m dsa.study.report"))
