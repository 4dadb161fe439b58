"""The GPU path without a GPU: `device: auto` picks CUDA when torch sees one, else the CPU; a CUDA device
asked for by name but not there is refused naming the config key."""

import pytest
import torch

from scunlearn import ScunlearnError
from scunlearn.runtime import resolve_device


def test_auto_uses_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto").type == "cuda"


def test_auto_falls_back_to_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device("auto").type == "cpu"


def test_device_cuda_without_cuda_names_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device("auto") == torch.device("cpu")  # auto falls back
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ScunlearnError) as e:
            resolve_device(spec)
        assert f"config device: '{spec}'" in str(e.value) and "no usable CUDA GPU" in str(e.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ScunlearnError, match=r"'cuda:1' asked for, but only 1 CUDA GPU\(s\) found"):
        resolve_device("cuda:1")

