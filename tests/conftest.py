"""Shared test settings: deterministic, and the losses' default backend unless a test says otherwise."""

import pytest
import torch

from kdlab import losses


@pytest.fixture(autouse=True)
def _seed_and_backend():
    torch.manual_seed(0)
    backend = losses.get_backend()
    yield
    losses.set_backend(backend)
