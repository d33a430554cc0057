"""One setup call that opens every notebook, after its parameters cell (``docs/report.md``, "Parameters")::

    # cell 1: the namespace before any parameter
    from dsa.study.setup import setup_notebook, snapshot_namespace
    _ns_before = snapshot_namespace(globals())

    # cell 2, tagged "parameters": annotated assignments (papermill's injected cell lands after it)
    device: str = "cpu"
    save_figures: bool = True

    # cell 3: validate, then set up
    nb = setup_notebook(globals(), _ns_before, "02_sparse_vs_dense", rules={...})
    P, DEV, FRESH_LABEL, maybe_save = nb.params, nb.device, nb.fresh_label, nb.save

``setup_notebook`` checks the parameters (``dsa.study.notebook_params.check_params``: an unknown or invalid one
stops the notebook here), shows them, sets up plotly and seaborn (``dsa.study.figures.setup_plotting``) and
pandas' display, resolves the ``device`` parameter, and shows the notebook's scope box
(``dsa.study.scope.fresh_run_scope``) when it has one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from .notebook_params import NamespaceSnapshot, Rule, check_params, snapshot_namespace


@dataclass(frozen=True)
class NotebookSetup:
    """What a notebook reads after its setup: ``params`` (the checked parameters, ``P.name``), ``device`` (the
    torch device of its fresh work), ``fresh_label`` (``dsa.records.fresh_run_label`` of that device) and
    ``save`` (``maybe_save(fig, name, source)``: ``dsa.study.figures.save_static`` when ``save_figures``)."""

    params: SimpleNamespace
    device: Any
    fresh_label: str
    save: Callable[[Any, str, str | None], None]


def setup_notebook(
    ns: Mapping[str, Any],
    before: NamespaceSnapshot,
    notebook: str,
    rules: Mapping[str, Rule | list[Rule]] | None = None,
    *,
    scope: bool = True,
) -> NotebookSetup:
    """Validate and show the parameters of notebook ``notebook`` (its file stem), then set up plotting, pandas
    display and the device, and show the scope box (``scope``; only for notebooks that have one).

    ns: the notebook's ``globals()``; before: the snapshot taken just before the parameters cell; rules: the
    parameters' rules (``check_params``). Parameters read when declared: ``device`` (default cpu),
    ``save_figures`` (default off), ``run_fresh``, ``fresh_size``, ``fresh_steps`` (the scope box)."""
    import pandas as pd  # noqa: PLC0415
    from IPython.display import Markdown, display  # noqa: PLC0415

    from dsa.checks import resolve_device  # noqa: PLC0415
    from dsa.records import fresh_run_label  # noqa: PLC0415

    from .figures import figure_saver, setup_plotting  # noqa: PLC0415
    from .scope import SCOPE, fresh_run_scope  # noqa: PLC0415

    params = check_params(ns, before, rules)
    display(params)
    setup_plotting()
    pd.set_option("display.max_colwidth", None)
    device = resolve_device(getattr(params, "device", "cpu"))
    if scope and notebook in SCOPE:
        box = fresh_run_scope(notebook, run_fresh=getattr(params, "run_fresh", True),
                              size=getattr(params, "fresh_size", "small"), device=device.type,
                              steps=getattr(params, "fresh_steps", None))
        if box:
            display(Markdown(box))
    return NotebookSetup(params, device, fresh_run_label(device), figure_saver(getattr(params, "save_figures", False)))


__all__ = ["NotebookSetup", "setup_notebook", "snapshot_namespace"]
