"""Experiment (not for main): the Hopper forward's d <= 64 dropout tiles at 192 x 64 (three consumer
warpgroups, spill-free under NVRTC 12.9 / 13.0 / 13.5) instead of 128 x 128. Imported before cuflash
selects a kernel (a pytest plugin, or imported by a wrapper of the CLI)."""
import os
from dataclasses import replace

from cuflash import specs

_orig = specs.FwdSm90Tiles.with_features


def _with_features(self, features, head_dim):
    t = _orig(self, features, head_dim)
    if (os.environ.get("D64DROP", "1") == "1" and features.dropout and 32 < head_dim <= 64 and self.block_m == 192
            and not (features.alibi or features.sink or features.bias)):
        t = replace(t, block_m=192, block_n=64)
    return t


specs.FwdSm90Tiles.with_features = _with_features
