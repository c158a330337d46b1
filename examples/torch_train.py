"""A causal multi-head attention layer trained a few steps with cuflash, beside the same layer on
torch SDPA from the same weights: the losses should agree to bf16 rounding.

    PYTHONPATH=. python3 examples/torch_train.py
"""
import copy

import torch
import torch.nn.functional as F

from cuflash.torch import flash_attn_qkvpacked_func


class CausalSelfAttention(torch.nn.Module):
    def __init__(self, dim=512, heads=8, use_cuflash=True):
        super().__init__()
        self.heads, self.use_cuflash = heads, use_cuflash
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.out = torch.nn.Linear(dim, dim, bias=False)

    def forward(self, x):  # x: (batch, seqlen, dim)
        b, s, d = x.shape
        qkv = self.qkv(x).view(b, s, 3, self.heads, d // self.heads)
        if self.use_cuflash:
            y = flash_attn_qkvpacked_func(qkv, causal=True)                      # (b, s, heads, d / heads)
        else:
            q, k, v = qkv.unbind(2)
            y = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True)
            y = y.transpose(1, 2)
        return self.out(y.reshape(b, s, d))


def train(model, steps=5, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        x = torch.randn(4, 1024, 512, device="cuda", dtype=torch.bfloat16, generator=gen)
        loss = (model(x).float() - x.float()).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


if __name__ == "__main__":
    torch.manual_seed(0)
    ours = CausalSelfAttention().cuda().to(torch.bfloat16)
    peer = copy.deepcopy(ours)
    peer.use_cuflash = False
    a, b = train(ours), train(peer)
    for i, (x, y) in enumerate(zip(a, b)):
        print(f"step {i}: cuflash {x:.5f}  sdpa {y:.5f}")
    assert all(abs(x - y) <= 1e-2 * abs(y) for x, y in zip(a, b)), "losses differ"
    print("ok")
