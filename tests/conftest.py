import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh generator seeded from the OS so every run draws new inputs; the seed is printed on failure."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(torch.seed() % 2**31)))
    print(f"random seed for this test: {seed}")
    return torch.Generator().manual_seed(seed)
