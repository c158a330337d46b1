# The d64 dropout backwards (bwd_sm90_ws.cu ping-pong, keep words drawn ahead), ragged GQA shapes.
import cupy as cp
import cuflash
from cuflash import testing
q, k, v = testing.random_qkv(2, 300, 200, 4, 2, 64, "bf16", xp=cp)
dout = testing.random_like(q)
for opts in (dict(), dict(window_size=(40, 8), softcap=20.0, alibi_slopes=cp.linspace(0.05, 0.4, 4, dtype=cp.float32))):
    for causal in (False, True):
        out, lse = cuflash.attention(q, k, v, causal=causal, return_lse=True, dropout_p=0.2, seed=9, **opts)
        for det in (False, True):
            cuflash.attention_backward(dout, q, k, v, out, lse, causal=causal, deterministic=det, dropout_p=0.2, seed=9, **opts)
cp.cuda.Device().synchronize()
print("done")
