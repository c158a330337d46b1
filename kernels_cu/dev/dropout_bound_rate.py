"""Dev probe: how often the d64 causal bf16 dropout case of tests/gpu/test_dropout.py exceeds the
accuracy bound under fresh random seeds, with the warp-specialised Hopper forward (v8) and with
v7's forward tile (128x64, fwd_sm90.cu) patched in. Prints failures per kernel."""
import sys

import numpy as np

sys.path.insert(0, "tests/gpu")
import test_dropout as td  # noqa: E402
from cuflash import api, specs, support  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
ws = specs.FWD_SM90_TILES[64]
for label, tiles in (("v8 ws 128x128s2", ws), ("v7 128x64", specs.FwdSm90Tiles(128, 64))):
    specs.FWD_SM90_TILES[64] = tiles
    for f in (support.select, support._fwd_spec):
        f.cache_clear()
    api._forget_plans()  # recorded launch plans hold the previous kernel
    fails = []
    for _ in range(N):
        q, k, v = td.draw("bf16", (257, 257), head_dim=64)
        seed = int(np.random.default_rng().integers(2**63))
        try:
            td.check_case(q, k, v, 0.17, seed, dict(causal=True))
        except AssertionError as e:
            fails.append(str(e).splitlines()[1][:120])
    name = api.fwd_spec("bf16", 64, specs.Features("causal", dropout=1), 0).name
    print(f"{label} ({name}): {len(fails)}/{N} over the bound", *fails, sep="\n  ", flush=True)
