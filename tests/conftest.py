"""Shared fixtures. The default run is CPU-only and offline: the switches are set before any
Hugging Face library is imported, and a socket guard turns any attempt at a network call into a
test failure."""

from __future__ import annotations

import os

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_name] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# CPU-only by default, also on a machine with a GPU (the tiny-model tests compare CPU numbers);
# HARNESS_TEST_GPU=1 leaves the GPUs visible for `-m gpu` runs.
if os.environ.get("HARNESS_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import socket
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests check what is true, not how fast: a per-example deadline on these shared, noisy machines
# only makes a first example that happens to import or compile something fail as "flaky".
settings.register_profile("harness", deadline=None)
settings.load_profile("harness")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly on any attempt to reach a remote host (loopback and unix sockets stay allowed)."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama with a real tokenizer (saved as safetensors), built once."""
    from tests.helpers import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
