"""build_info, the SIMD switch and FASTBN_SIMD, the command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import fastbn
from fastbn.__main__ import format_info, main

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
    out = subprocess.run(
        [sys.executable, "-m", "fastbn", "info", "--json"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0
    assert json.loads(out.stdout)["version"] == fastbn.__version__
    out = subprocess.run([sys.executable, "-m", "fastbn", "--cmake-dir"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert os.path.isfile(os.path.join(out.stdout.strip(), "fastbnConfig.cmake"))
    out = subprocess.run([sys.executable, "-m", "fastbn", "--include"], capture_output=True, text=True, timeout=120)
    assert os.path.isfile(os.path.join(out.stdout.strip(), "fastbn", "fastbn.h"))


def test_cli_info_prints_a_summary_and_json_on_request(capsys):
    info = fastbn.build_info()
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == info
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    lines = text.splitlines()
    assert lines[0] == f"fastbn {fastbn.__version__}"
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in lines[1:])
    assert rows["SIMD path"] == f"{info['simd']} (compiled: {info['simd_compiled']})"
    assert rows["threads"].startswith(f"{info['num_threads']} (default {info['max_threads']}; ")
    assert rows["CUDA"].startswith("compiled in" if info["cuda"] else "not compiled in")
    assert rows["compiler"] == info["compiler"]


def test_info_summary_has_every_build_info_key():
    info = {**fastbn.build_info(), "openmp": False, "cuda": False, "a_new_key": 42}
    lines = format_info(info, cuda_usable=False).splitlines()
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in lines[1:])
    assert rows["threads"].endswith("; no OpenMP)")
    assert rows["CUDA"] == "not compiled in"
    assert rows["a new key"] == "42"
    cuda = format_info({**info, "cuda": True}, cuda_usable=True)
    assert f"CUDA {info['cuda_version']}, architectures {info['cuda_architectures']}); a device is usable now" in cuda


def test_cli_rejects_an_unknown_command():
    out = subprocess.run([sys.executable, "-m", "fastbn", "frobnicate"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
