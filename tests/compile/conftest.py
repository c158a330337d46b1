"""Fixtures of the compile tests."""
from __future__ import annotations

import pytest

from cuflash.compile import cache


@pytest.fixture(scope="module")
def compile_all(tmp_path_factory):
    """compile_all(specs, archs) -> {(spec name, requested arch): Outcome}: every spec
    and arch compiled for real (force), in parallel processes, into a private cache
    folder; the code path of `cuflash compile`."""

    def run(specs, archs) -> dict:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CUFLASH_CACHE_DIR", str(tmp_path_factory.mktemp("cubins")))
            mp.delenv("CUFLASH_DISABLE_DISK_CACHE", raising=False)
            return {(o.spec.name, o.arch): o for o in cache.compile_many(specs, archs, force=True)}

    return run
