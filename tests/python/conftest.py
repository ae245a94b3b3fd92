"""Shared fixtures for the Python tests. Area-specific fixtures live in their own files."""
import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator: each test draws the same inputs on every run."""
    return torch.Generator().manual_seed(20250611)
