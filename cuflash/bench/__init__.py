"""`cuflash bench`: time cuflash against its peers and this GPU's ceilings (DESIGN.md section 6).

Modules: configs (sweeps, presets, modes, FLOP and byte formulas), timing (CUDA-event
and host-clock timers, L2 flush, ceilings), peers (torch SDPA backends, FlexAttention,
JAX cuDNN), runner (the sweep and cuflash's correctness check), report (table, CSV, JSON,
PNG) and cli (add_arguments / run / main).  Nothing here imports CuPy, torch or JAX
at import time, so ``--help`` works anywhere.
"""
