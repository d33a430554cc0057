# The two commands of the README: `make report` (main job) and `make test`. Each creates .venv and
# installs everything it needs first, so both work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install report test browser-deps lab readme-figures

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the local CPU build; any other torch requirement downloads gigabytes of CUDA packages
	$(PY) -m pip install -q torch==2.13.0
	# every extra (study, train, onnx, test): the notebooks, the report, the export and every test
	$(PY) -m pip install -q -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium for the browser test (Playwright drives it; no browser download is possible here)
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing and cannot apt-get install it: the browser test will skip"; fi; }

report: $(STAMP)
	$(PY) -m dsa.study.report --params small

test: $(STAMP) browser-deps
	$(PY) -m pytest -q

# JupyterLab on the notebooks; as root (most containers) JupyterLab refuses to start without --allow-root
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/ $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

# the README's key figures (figures/readme/*.png) from the recorded data under data/
readme-figures: $(STAMP)
	$(PY) -m dsa.study.readme_figures
