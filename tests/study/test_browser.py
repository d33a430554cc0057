"""End-to-end: notebook 01 in a real JupyterLab, driven by headless Chromium through Playwright.

JupyterLab is started on 127.0.0.1 (a free port, token auth, a temporary root holding a copy of notebook
01 with small parameters injected the way papermill does, temporary settings and workspaces). The test
opens the notebook, runs all cells, moves the top-k slider of the indexer explorer, and checks that the
selection heatmap's data changed in the browser. Screenshots go to report/screenshots/ (or
$DSA_SCREENSHOT_DIR).

Needs Debian's ``chromium`` (apt-get install -y chromium; or $DSA_CHROMIUM pointing at a Chromium binary)
and the ``playwright`` Python package (pip install playwright; its own browser download is not used).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "01_indexer_math.ipynb"
CHROMIUM = os.environ.get("DSA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("DSA_SCREENSHOT_DIR", REPO / "report" / "screenshots"))
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
# Small values so that "run all" takes seconds; injected as papermill would (an injected-parameters cell).
PARAMS = {"seq_len": 64, "batch": 2, "top_k": 12, "view_len": 32, "local_window": 8, "k_sweep": "4,8,16",
          "n_layers": 2, "save_figures": False, "train_steps": 10, "train_warmup": 5, "explorer_len": 96}
K_LABEL = "top-k k (keys)"

if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium) or set "
                "DSA_CHROMIUM", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the playwright package is missing: pip install playwright")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 serving a temporary root; yields (base_url, token, notebook name)."""
    import papermill.parameterize as pz
    from papermill.iorw import load_notebook_node

    tmp = tmp_path_factory.mktemp("lab")
    root, settings, workspaces, cfg, logs = (tmp / n for n in ("root", "settings", "workspaces", "config", "logs"))
    for d in (root, settings, workspaces, cfg, logs):
        d.mkdir()
    nb = pz.parameterize_notebook(load_notebook_node(str(NOTEBOOK)), PARAMS)
    nbformat.write(nb, str(root / NOTEBOOK.name))
    # Render every cell (no windowing: off-screen cells stay in the DOM) and fetch no news.
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))

    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        JUPYTER_CONFIG_DIR=str(cfg), JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(workspaces),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), DSA_FIGURES_DIR=str(tmp / "figures"),
    )
    log = open(logs / "lab.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({proc.returncode}):\n{(logs / 'lab.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"JupyterLab did not answer in 60 s:\n{(logs / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, token, NOTEBOOK.name
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


JS_KERNEL_STATUS = """() => {
  const app = window.jupyterapp; if (!app) return 'no-app';
  const w = app.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return k ? k.status : 'no-kernel';
}"""

JS_RUN_STATE = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const cells = w.content.widgets.filter(c => c.model.type === 'code');
  const errors = [];
  cells.forEach((c, i) => c.model.outputs.toJSON().forEach(o => {
    if (o.output_type === 'error') errors.push(`cell ${i}: ${o.ename}: ${o.evalue}`); }));
  const done = cells.filter(c => c.model.executionCount !== null && c.promptNode.textContent.indexOf('*') < 0).length;
  return {total: cells.length, done, errors};
}"""

JS_EXPLORER = """() => {
  const gds = Array.from(document.querySelectorAll('.js-plotly-plot'))
     .filter(gd => gd.closest('.widget-vbox') && gd.layout \
&& JSON.stringify(gd.layout.title || '').includes('Indexer explorer'));
  if (!gds.length) return null;
  const gd = gds[0];
  gd.setAttribute('data-test', 'explorer-plot');
  gd.closest('.widget-vbox').setAttribute('data-test', 'explorer');
  return {n_traces: gd.data.length, selection: JSON.stringify(gd.data[1].z),
          heatmap_images: gd.querySelectorAll('.heatmaplayer image, .hm image').length};
}"""


def _wait(page, js, pred, timeout_s, what):
    deadline = time.time() + timeout_s
    last = None
    while time.time() < deadline:
        last = page.evaluate(js)
        if pred(last):
            return last
        page.wait_for_timeout(250)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last state: {str(last)[:500]}")


def test_explorer_k_slider_updates_heatmap(lab):
    base, token, name = lab
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(f"{base}/lab/tree/{name}?token={token}")
            _wait(page, JS_KERNEL_STATUS, lambda s: s == "idle", 60, "the kernel to start")
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            state = _wait(page, JS_RUN_STATE, lambda s: s["errors"] or (s["total"] and s["done"] == s["total"]),
                          90, "all cells to run")
            assert not state["errors"], f"the notebook raised in JupyterLab: {state['errors']}"
            _wait(page, JS_KERNEL_STATUS, lambda s: s == "idle", 30, "the kernel to be idle")
            before = _wait(page, JS_EXPLORER, lambda s: s is not None and s["heatmap_images"] >= 4, 30,
                           "the explorer's four heatmaps to render")
            explorer = page.locator("[data-test=explorer]")
            explorer.scroll_into_view_if_needed()
            explorer.screenshot(path=str(SHOTS / "01_indexer_explorer_before.png"))

            # Move the k slider: focus its handle and press the arrow keys (noUiSlider's keyboard support).
            slider = page.locator(".widget-slider").filter(has_text=K_LABEL)
            readout = slider.locator(".widget-readout")
            k0 = int(readout.inner_text())
            slider.locator(".noUi-handle").first.click()
            for _ in range(5):
                page.keyboard.press("ArrowLeft")
            page.wait_for_timeout(300)
            if int(readout.inner_text()) == k0:  # keyboard not taken: type into the editable readout instead
                readout.click()
                page.keyboard.press("Control+A")
                page.keyboard.type(str(max(1, k0 - 5)))
                page.keyboard.press("Enter")
            k1 = int(readout.inner_text())
            assert k1 != k0, "the k slider did not move"
            after = _wait(page, JS_EXPLORER, lambda s: s is not None and s["selection"] != before["selection"], 30,
                          "the selection heatmap to change after moving k")
            _wait(page, JS_KERNEL_STATUS, lambda s: s == "idle", 30, "the kernel to be idle")
            page.wait_for_timeout(500)
            shot = SHOTS / "01_indexer_explorer_after.png"
            explorer.screenshot(path=str(shot))
            page.screenshot(path=str(SHOTS / "01_lab_full_page.png"))
            sel0, sel1 = json.loads(before["selection"]), json.loads(after["selection"])
            n0 = sum(v for row in sel0 for v in row if v is not None)
            n1 = sum(v for row in sel1 for v in row if v is not None)
            assert n1 < n0, f"k went {k0} -> {k1} but the number of selected cells went {n0} -> {n1}"
            print(f"k {k0} -> {k1}: selected cells {n0} -> {n1}; screenshot {shot}")
        finally:
            browser.close()
