"""A causal multi-head attention layer in JAX trained a few steps with cuflash.jax, beside the
same layer on jax.nn.dot_product_attention from the same weights: the losses should agree to
bf16 rounding. Plain JAX (no Flax or optax needed).

    XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=. python3 examples/jax_train.py
"""
import jax
import jax.numpy as jnp

import cuflash.jax

DIM, HEADS = 512, 8


def init(key):
    k1, k2 = jax.random.split(key)
    scale = DIM ** -0.5
    return {"qkv": jax.random.normal(k1, (DIM, 3 * DIM), jnp.float32) * scale,
            "out": jax.random.normal(k2, (DIM, DIM), jnp.float32) * scale}


def layer(params, x, use_cuflash):  # x: (batch, seqlen, DIM) bf16
    b, s, _ = x.shape
    qkv = (x @ params["qkv"].astype(x.dtype)).reshape(b, s, 3, HEADS, DIM // HEADS)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]      # (b, s, HEADS, DIM / HEADS)
    if use_cuflash:
        y = cuflash.jax.attention(q, k, v, causal=True)
    else:
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return y.reshape(b, s, DIM) @ params["out"].astype(x.dtype)


def loss(params, x, use_cuflash):
    return jnp.mean(jnp.square(layer(params, x, use_cuflash).astype(jnp.float32) - x.astype(jnp.float32)))


def train(use_cuflash, steps=5, lr=0.1):
    params = init(jax.random.PRNGKey(0))
    step = jax.jit(lambda p, x: jax.value_and_grad(loss)(p, x, use_cuflash))
    losses = []
    for i in range(steps):
        x = jax.random.normal(jax.random.PRNGKey(100 + i), (4, 1024, DIM), jnp.bfloat16)
        value, grads = step(params, x)
        params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
        losses.append(float(value))
    return losses


if __name__ == "__main__":
    a, b = train(True), train(False)
    for i, (x, y) in enumerate(zip(a, b)):
        print(f"step {i}: cuflash {x:.5f}  jax.nn.dot_product_attention {y:.5f}")
    assert all(abs(x - y) <= 1e-2 * abs(y) for x, y in zip(a, b)), "losses differ"
    print("ok")
