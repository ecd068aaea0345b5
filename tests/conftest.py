import os

import pytest
import torch

# Tests use small tensors: one thread avoids threading overhead and oversubscription on 2-core CI.
torch.set_num_threads(1)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root() -> str:
    return REPO_ROOT
