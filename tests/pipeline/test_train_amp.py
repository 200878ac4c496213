"""train.amp: the config accepts YAML's bare `off`, and bf16 autocasts the forward pass on the CPU."""

from __future__ import annotations

import pytest
import torch

from edgefpn.config import load_config
from edgefpn.errors import ConfigError
from edgefpn.training.loop import amp_dtype


def test_amp_values():
    assert load_config(None, ["train.amp=off"]).train.amp == "off"  # YAML 1.1 reads `off` as false
    assert load_config(None, []).train.amp == "off"
    assert load_config(None, ["train.amp=bf16"]).train.amp == "bf16"
    with pytest.raises(ConfigError, match=r"train\.amp must be off, bf16, fp16 or auto, got True"):
        load_config(None, ["train.amp=on"])


def test_autocast_dtypes_on_the_cpu():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    cpu = torch.device("cpu")
    assert amp_dtype(load_config(None, ["train.amp=off"]), cpu) is None
    dtype = amp_dtype(load_config(None, ["train.amp=bf16"]), cpu)
    with torch.autocast("cpu", dtype=dtype):
        assert conv(x).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        amp_dtype(load_config(None, ["train.amp=fp16"]), cpu)
