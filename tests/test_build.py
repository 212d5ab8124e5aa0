"""build_info, the SIMD switch and FASTBN_SIMD, the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import fastbn

from conftest import SIMD_PATHS


def run_python(code, **env):
    e = dict(os.environ)
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120)


def test_build_info_fields():
    info = fastbn.build_info()
    for key in ("version", "simd", "openmp", "max_threads", "cuda", "compiler", "simd_compiled"):
        assert key in info
    assert info["version"] == fastbn.__version__
    assert info["simd"] == fastbn.get_simd()
    assert isinstance(info["cuda"], bool) and isinstance(info["openmp"], bool)
    assert info["max_threads"] >= 1


def test_scalar_path_always_exists_and_best_is_default():
    assert "scalar" in SIMD_PATHS
    out = run_python("import fastbn; print(fastbn.get_simd())", FASTBN_SIMD="")
    assert out.stdout.strip() == SIMD_PATHS[0]


@pytest.mark.parametrize("path", SIMD_PATHS)
def test_environment_variable_forces_a_path(path):
    out = run_python("import fastbn, json; print(json.dumps(fastbn.build_info()))", FASTBN_SIMD=path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["simd"] == path
    assert "warning" not in out.stderr.lower()


def test_unknown_path_falls_back_with_a_warning():
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import fastbn\n"
        "print(fastbn.get_simd()); print(w[0].category.__name__, w[0].message)\n"
    )
    out = run_python(code, FASTBN_SIMD="neon9")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == SIMD_PATHS[0]
    assert lines[1].startswith("RuntimeWarning") and "FASTBN_SIMD=neon9" in lines[1]


def test_cli_info_and_paths():
    out = subprocess.run([sys.executable, "-m", "fastbn", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert json.loads(out.stdout)["version"] == fastbn.__version__
    out = subprocess.run([sys.executable, "-m", "fastbn", "--cmake-dir"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert os.path.isfile(os.path.join(out.stdout.strip(), "fastbnConfig.cmake"))
    out = subprocess.run([sys.executable, "-m", "fastbn", "--include"], capture_output=True, text=True, timeout=120)
    assert os.path.isfile(os.path.join(out.stdout.strip(), "fastbn", "fastbn.h"))


def test_cli_rejects_an_unknown_command():
    out = subprocess.run([sys.executable, "-m", "fastbn", "frobnicate"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
