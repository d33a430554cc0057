import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _own_output_folders(tmp_path_factory):
    """Every test writes runs (``$DSA_RUNS_DIR``: notebooks' fresh sweeps) and static figures
    (``$DSA_FIGURES_DIR``) into this session's temporary folders, never into the checkout's ``runs/`` or
    ``figures/``: a ``make report`` running in the same checkout keeps its files. Notebook kernels started by
    the tests inherit the environment."""
    saved = {k: os.environ.get(k) for k in ("DSA_RUNS_DIR", "DSA_FIGURES_DIR")}
    os.environ["DSA_RUNS_DIR"] = str(tmp_path_factory.mktemp("runs"))
    os.environ["DSA_FIGURES_DIR"] = str(tmp_path_factory.mktemp("figures"))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh generator seeded from the OS so every run draws new inputs; the seed is printed on failure."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(torch.seed() % 2**31)))
    print(f"random seed for this test: {seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _own_runs_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs that tests train (a notebook's fresh sweep writes under ``dsa.study.runs.runs_dir``) go to a temporary
    folder, never to the repository's runs/: `make test` while `make report` runs must not clobber its runs.
    Notebook kernels inherit it (dsa.study.report passes the environment on)."""
    monkeypatch.setenv("DSA_RUNS_DIR", str(tmp_path_factory.mktemp("runs")))
