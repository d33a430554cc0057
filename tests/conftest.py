import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh generator seeded from the OS so every run draws new inputs; the seed is printed on failure."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(torch.seed() % 2**31)))
    print(f"random seed for this test: {seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _own_runs_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs that tests train (a notebook's fresh sweep writes under ``dsa.runs.runs_dir``) go to a temporary
    folder, never to the repository's runs/: `make test` while `make report` runs must not clobber its runs.
    Notebook kernels inherit it (dsa.report passes the environment on)."""
    monkeypatch.setenv("DSA_RUNS_DIR", str(tmp_path_factory.mktemp("runs")))
