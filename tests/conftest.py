import os

import pytest
import torch

# Two cores in CI: avoid oversubscription when several torch ops run in parallel.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root() -> str:
    return REPO_ROOT
