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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread avoids oversubscribing a shared CPU (several times faster there)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
