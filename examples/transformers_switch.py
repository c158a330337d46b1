"""Switch a transformers model to cuflash with one line (random weights, no download).

    PYTHONPATH=. python3 examples/transformers_switch.py
"""
import torch
import transformers

import cuflash.torch

config = transformers.MistralConfig(vocab_size=1000, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                                    num_attention_heads=8, num_key_value_heads=2, sliding_window=128)
torch.manual_seed(0)
model = transformers.MistralForCausalLM(config).cuda().to(torch.bfloat16).eval()
ids = torch.randint(0, 1000, (2, 512), device="cuda")
with torch.no_grad():
    model.set_attn_implementation("sdpa")
    want = model(ids).logits.float()
    model.set_attn_implementation(cuflash.torch.register_transformers())   # the one line: "cufa"
    got = model(ids).logits.float()
print("max |logits - sdpa logits|:", (got - want).abs().max().item(), "of max", want.abs().max().item())
