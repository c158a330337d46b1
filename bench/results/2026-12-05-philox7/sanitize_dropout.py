# Dropout forwards and backwards under compute-sanitizer (issue 10): the Hopper kernels at d64
# (bwd_sm90_ws.cu ping-pong, keep words drawn ahead) and d128 (bwd_sm90.cu), ragged GQA shapes,
# plain and with window + softcap + ALiBi, deterministic or not. CUFLASH_DISABLE_SM90=1: the portable ones.
import cupy as cp
import cuflash
from cuflash import testing
for d in (64, 128):
    q, k, v = testing.random_qkv(2, 300, 200, 4, 2, d, "bf16", xp=cp)
    dout = testing.random_like(q)
    for opts in (dict(), dict(window_size=(40, 8), softcap=20.0, alibi_slopes=cp.linspace(0.05, 0.4, 4, dtype=cp.float32))):
        for causal in (False, True):
            out, lse = cuflash.attention(q, k, v, causal=causal, return_lse=True, dropout_p=0.2, seed=9, **opts)
            for det in (False, True):
                cuflash.attention_backward(dout, q, k, v, out, lse, causal=causal, deterministic=det, dropout_p=0.2,
                                           seed=9, **opts)
cp.cuda.Device().synchronize()
print("done")
