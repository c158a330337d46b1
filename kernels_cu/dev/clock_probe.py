"""Dev probe: the SM clock, power draw and throttle reasons while each of several forwards runs back to back
(bf16, d128, 8k, batch 2, 16 heads, non-causal unless CAUSAL=1), with its time per call:

    PYTHONPATH=$PWD python3 kernels_cu/dev/clock_probe.py [SECONDS]

Cases: no bias, a per-key (b, 1, 1, s) bias, a full (b, h, s, s) bias. Each runs for SECONDS (default 3)
after a warm-up while `nvidia-smi -lms 50` samples the GPU; the samples inside a case's window are
averaged. The question (bench/NOTES.md v36): the per-key forward did not follow its instruction count at
boost clocks (12% fewer instructions, the same time) although it did under ncu's locked clocks; a kernel
that draws the board to its power limit runs at a lower clock, and the clock, not the issue slots, then
sets its time."""
import os
import subprocess
import sys
import tempfile
import time

import cupy as cp
import numpy as np

import cuflash
from cuflash import testing

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
CAUSAL = os.environ.get("CAUSAL", "0") == "1"
DEVICE = str(cp.cuda.Device().id)
# The throttle reasons' field was renamed (clocks_event_reasons) in newer drivers: take the one this one knows.
for reasons in ("clocks_event_reasons.active", "clocks_throttle_reasons.active"):
    FIELDS = f"timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,{reasons}"
    if subprocess.run(["nvidia-smi", f"--query-gpu={FIELDS}", "--format=csv", "-i", DEVICE],
                      capture_output=True).returncode == 0:
        break

q, k, v = testing.random_qkv(2, 8192, 8192, 16, 16, 128, "bf16", xp=cp, seed=0)
cases = {"plain": None,
         "per_key": cp.random.standard_normal((2, 1, 1, 8192), dtype=cp.float32).astype(q.dtype),
         "full": cp.random.standard_normal((2, 16, 8192, 8192), dtype=cp.float32).astype(q.dtype)}

log = tempfile.NamedTemporaryFile("w+", suffix=".csv", delete=False)
smi = subprocess.Popen(["nvidia-smi", f"--query-gpu={FIELDS}", "--format=csv,noheader,nounits", "-lms", "50",
                        "-i", DEVICE], stdout=log, stderr=subprocess.DEVNULL)
windows = {}
try:
    for name, bias in cases.items():
        call = lambda: cuflash.attention(q, k, v, bias=bias, causal=CAUSAL)  # noqa: E731
        for _ in range(3):
            call()
        cp.cuda.runtime.deviceSynchronize()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        t0, n = time.time(), 0
        start.record()
        while time.time() - t0 < SECONDS:
            for _ in range(10):
                call()
            n += 10
            end.record()
            end.synchronize()  # the host stays within a few calls of the GPU, so the window is the GPU's
        t1 = time.time()
        windows[name] = (t0 + 0.5, t1, cp.cuda.get_elapsed_time(start, end) / n)  # the first 0.5 s ramps
        time.sleep(1.0)  # a gap between cases, so that one's samples do not run into the next's
finally:
    smi.terminate()
    smi.wait()



def sample(line):
    """(seconds since the epoch, SM MHz, memory MHz, W, C, throttle reasons) of one nvidia-smi line, or None.
    Its timestamp is local time, '2026/12/07 08:40:37.123'."""
    parts = [x.strip() for x in line.split(",")]
    if len(parts) != 6:
        return None
    whole, _, frac = parts[0].partition(".")
    try:
        stamp = time.mktime(time.strptime(whole, "%Y/%m/%d %H:%M:%S")) + float("0." + (frac or "0"))
        return (stamp, *(float(x) for x in parts[1:5]), parts[5])
    except ValueError:  # a line cut by terminate(), or [N/A] fields
        return None


rows = [r for r in map(sample, open(log.name)) if r is not None]
os.unlink(log.name)
print(f"bf16 d128 8k batch 2 16 heads causal={CAUSAL}; {SECONDS:.1f} s per case, nvidia-smi every 50 ms")
print("case      ms/call  samples  SM MHz (min-max)   mem MHz   W (max)      C   throttle reasons seen")
for name, (a, b, ms) in windows.items():
    inside = [r for r in rows if a <= r[0] <= b]
    if not inside:
        print(f"{name:9s} {ms:7.3f}  no samples in its window")
        continue
    sm, mem, watts, temp = (np.array([r[i] for r in inside]) for i in (1, 2, 3, 4))
    reasons = sorted({r[5] for r in inside})
    print(f"{name:9s} {ms:7.3f}  {len(inside):7d}  {sm.mean():6.0f} ({sm.min():.0f}-{sm.max():.0f})  {mem.mean():8.0f}"
          f"  {watts.mean():5.0f} ({watts.max():.0f})  {temp.mean():4.0f}   {' '.join(reasons)}")
