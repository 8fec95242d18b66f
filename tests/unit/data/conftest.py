"""Fixtures shared by the data tests."""

import pytest


@pytest.fixture
def isolated_hf_cache(tmp_path, monkeypatch):
    """Keep `datasets`' arrow cache out of ~/.cache and refuse the hub; returns tmp_path."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path
