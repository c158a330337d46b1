"""Experiment (not for main): kernels_cu/dev/fwd90_dropout_d64_three_warpgroups.patch's rule without applying
it. A Hopper forward with dropout alone (no ALiBi, sink or bias) keeps the plain tiles' rows (192 at d32 and
d64: three consumer warpgroups) on 64-key blocks instead of dropping to 128 rows. Import it before cuflash
selects a kernel: as a pytest plugin (-p patch_d64drop), or through bench_d64drop.py. D64DROP=0 turns it off."""
import os
from dataclasses import replace

from cuflash import specs

_orig = specs.FwdSm90Tiles.with_features


def _with_features(self, features, head_dim):
    t = _orig(self, features, head_dim)
    alone = features.dropout and not (features.alibi or features.sink or features.bias)
    if os.environ.get("D64DROP", "1") == "1" and alone and self.stages and self.block_m > 128:
        t = replace(t, block_m=self.block_m, block_n=64)
    return t


specs.FwdSm90Tiles.with_features = _with_features
