"""cuflash.compile.env: every variable resolves as ENV_VARS and the README say."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cuflash.compile import env

REPO = Path(__file__).resolve().parents[2]
ALL = [v.name for v in env.ENV_VARS]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ALL + ["XDG_CACHE_HOME"]:
        monkeypatch.delenv(name, raising=False)


def test_table_names_the_required_variables():
    assert set(ALL) >= {
        "CUFLASH_CACHE_DIR",
        "CUFLASH_DISABLE_DISK_CACHE",
        "CUFLASH_KERNELS_DIR",
        "CUFLASH_LOG_LEVEL",
        "CUFLASH_NVRTC_OPTIONS",
    }
    assert len(ALL) == len(set(ALL))
    for var in env.ENV_VARS:
        assert var.name.startswith("CUFLASH_") and var.default and var.meaning


def test_cache_dir_default_is_under_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert env.cache_dir() == tmp_path / ".cache" / "cuflash"


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert env.cache_dir() == tmp_path / "xdg" / "cuflash"


def test_cache_dir_variable_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CUFLASH_CACHE_DIR", str(tmp_path / "mine"))
    assert env.cache_dir() == tmp_path / "mine"


@pytest.mark.parametrize("value, enabled", [(None, True), ("0", True), ("", True), ("1", False), ("true", False)])
def test_disable_disk_cache(monkeypatch, value, enabled):
    if value is not None:
        monkeypatch.setenv("CUFLASH_DISABLE_DISK_CACHE", value)
    assert env.disk_cache_enabled() is enabled


def test_disable_disk_cache_rejects_nonsense(monkeypatch):
    monkeypatch.setenv("CUFLASH_DISABLE_DISK_CACHE", "maybe")
    with pytest.raises(ValueError, match="CUFLASH_DISABLE_DISK_CACHE"):
        env.disk_cache_enabled()


def test_nvrtc_options_split_like_a_shell(monkeypatch):
    assert env.nvrtc_extra_options() == ()
    monkeypatch.setenv("CUFLASH_NVRTC_OPTIONS", '-lineinfo  --define-macro=X="a b"')
    assert env.nvrtc_extra_options() == ("-lineinfo", "--define-macro=X=a b")


def test_kernels_dir_in_a_checkout_is_kernels_cu_beside_the_package():
    import cuflash

    assert env.kernels_dir() == Path(cuflash.__file__).resolve().parent.parent / "kernels_cu"
    assert env.kernels_dir() == REPO / "kernels_cu"


def test_kernels_dir_variable_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("CUFLASH_KERNELS_DIR", str(tmp_path))
    assert env.kernels_dir() == tmp_path.resolve()


def test_kernels_dir_variable_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv("CUFLASH_KERNELS_DIR", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="CUFLASH_KERNELS_DIR"):
        env.kernels_dir()


@pytest.mark.parametrize("value, level", [(None, None), ("INFO", logging.INFO), ("debug", logging.DEBUG), ("30", 30)])
def test_log_level(monkeypatch, value, level):
    if value is not None:
        monkeypatch.setenv("CUFLASH_LOG_LEVEL", value)
    assert env.log_level() == level


def test_log_level_rejects_unknown_names(monkeypatch):
    monkeypatch.setenv("CUFLASH_LOG_LEVEL", "LOUD")
    with pytest.raises(ValueError, match="CUFLASH_LOG_LEVEL"):
        env.log_level()


def _logger_state(**variables) -> str:
    """Level and handler count of the `cuflash` logger in a fresh process after `import cuflash.compile`."""
    code = "import logging, cuflash.compile; l = logging.getLogger('cuflash'); print(l.level, len(l.handlers))"
    run_env = {k: v for k, v in os.environ.items() if k not in ALL}
    run_env.update(variables, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_log_level_is_applied_on_import():
    assert _logger_state() == "0 0"  # unset: the application's logging rules apply
    assert _logger_state(CUFLASH_LOG_LEVEL="INFO") == f"{logging.INFO} 1"


def test_only_env_py_reads_cuflash_variables():
    pattern = re.compile(r"(environ|getenv)\b[^\n]*CUFLASH_")
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "cuflash").rglob("*.py")
        if path.name != "env.py" and pattern.search(path.read_text())
    ]
    assert not offenders, f"read CUFLASH_* variables through cuflash.compile.env, not in {offenders}"


def test_readme_table_lists_exactly_the_variables():
    readme = (REPO / "README.md").read_text()
    listed = re.findall(r"^\| `(CUFLASH_[A-Z0-9_]+)` \|", readme, flags=re.M)
    assert sorted(listed) == sorted(ALL), "README's table and ENV_VARS name different variables"
    assert env.markdown_table() in readme, (
        "README's environment table differs from ENV_VARS; paste the output of "
        "`python -c 'from cuflash.compile import env; print(env.markdown_table())'` into README.md"
    )
