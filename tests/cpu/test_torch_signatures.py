"""cuflash.torch keeps flash-attn 2.x's signatures: names, order and defaults of every
parameter flash-attn has, cuflash's own options only as keywords after them. Read from
the source with ast, so this runs without torch."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cuflash

#: flash-attn 2.8's public functions (flash_attn/flash_attn_interface.py): (name, default) in order;
#: REQUIRED marks a parameter without a default.
REQUIRED = object()
_DENSE_OPTIONS = [("dropout_p", 0.0), ("softmax_scale", None), ("causal", False), ("window_size", (-1, -1)),
                  ("softcap", 0.0), ("alibi_slopes", None), ("deterministic", False), ("return_attn_probs", False)]
FLASH_ATTN_2 = {
    "flash_attn_func": [("q", REQUIRED), ("k", REQUIRED), ("v", REQUIRED)] + _DENSE_OPTIONS,
    "flash_attn_qkvpacked_func": [("qkv", REQUIRED)] + _DENSE_OPTIONS,
    "flash_attn_kvpacked_func": [("q", REQUIRED), ("kv", REQUIRED)] + _DENSE_OPTIONS,
    "flash_attn_varlen_func": [("q", REQUIRED), ("k", REQUIRED), ("v", REQUIRED), ("cu_seqlens_q", REQUIRED),
                               ("cu_seqlens_k", REQUIRED), ("max_seqlen_q", REQUIRED), ("max_seqlen_k", REQUIRED)]
    + _DENSE_OPTIONS + [("block_table", None)],
    "flash_attn_varlen_qkvpacked_func": [("qkv", REQUIRED), ("cu_seqlens", REQUIRED), ("max_seqlen", REQUIRED)]
    + _DENSE_OPTIONS,
    "flash_attn_varlen_kvpacked_func": [("q", REQUIRED), ("kv", REQUIRED), ("cu_seqlens_q", REQUIRED),
                                        ("cu_seqlens_k", REQUIRED), ("max_seqlen_q", REQUIRED),
                                        ("max_seqlen_k", REQUIRED)] + _DENSE_OPTIONS,
    "flash_attn_with_kvcache": [("q", REQUIRED), ("k_cache", REQUIRED), ("v_cache", REQUIRED), ("k", None),
                                ("v", None), ("rotary_cos", None), ("rotary_sin", None), ("cache_seqlens", None),
                                ("cache_batch_idx", None), ("cache_leftpad", None), ("block_table", None),
                                ("softmax_scale", None), ("causal", False), ("window_size", (-1, -1)),
                                ("softcap", 0.0), ("rotary_interleaved", True), ("alibi_slopes", None),
                                ("num_splits", 0), ("return_softmax_lse", False)],
}


def _functions() -> dict:
    tree = ast.parse((Path(cuflash.__file__).parent / "torch.py").read_text())
    return {node.name: node.args for node in tree.body if isinstance(node, ast.FunctionDef)}


@pytest.mark.parametrize("name", list(FLASH_ATTN_2))
def test_flash_attn_2_signature(name):
    args = _functions()[name]
    assert not args.posonlyargs and args.vararg is None and args.kwarg is None
    defaults = [REQUIRED] * (len(args.args) - len(args.defaults)) + [ast.literal_eval(d) for d in args.defaults]
    got = [(a.arg, d) for a, d in zip(args.args, defaults)]
    assert got == FLASH_ATTN_2[name]
    # cuflash's own options: keyword-only, after flash-attn's, each with a default
    assert all(d is not None for d in args.kw_defaults)
    varlen = ["learnable_sink", "check_lengths"]
    extra = {"flash_attn_with_kvcache": ["learnable_sink", "check_indices"],
             "flash_attn_func": ["learnable_sink", "bias"], "flash_attn_varlen_func": varlen,
             "flash_attn_varlen_qkvpacked_func": varlen, "flash_attn_varlen_kvpacked_func": varlen,
             }.get(name, ["learnable_sink"])
    assert [a.arg for a in args.kwonlyargs] == extra


def test_every_flash_attn_2_function_is_exported():
    tree = ast.parse((Path(cuflash.__file__).parent / "torch.py").read_text())
    exported = next(ast.literal_eval(n.value) for n in tree.body
                    if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "__all__")
    assert set(FLASH_ATTN_2) <= set(exported)


def test_import_cuflash_does_not_import_torch_or_jax():
    import subprocess
    import sys

    code = "import sys, cuflash; print('torch' in sys.modules, 'jax' in sys.modules)"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).split() == ["False", "False"]
