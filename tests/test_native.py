"""Native consumers of the INSTALLED package: the C++ unit tests (CTest) and examples/cpp, examples/c built out
of tree with find_package(fastbn) against the wheel's CMake directory, and the pkg-config file."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import fastbn

HERE = Path(__file__).resolve().parent


def cmake_exe() -> str:
    try:  # the cmake package from PyPI (a test dependency)
        import cmake

        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except ImportError:
        found = shutil.which("cmake")
        if not found:
            pytest.fail("cmake is needed for the native tests: pip install cmake (it is in fastbn[test])")
        return found


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def configure_and_build(source: Path, build: Path, *extra) -> None:
    cmake = cmake_exe()
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    run(
        [
            cmake,
            "-S",
            source,
            "-B",
            build,
            *gen,
            f"-Dfastbn_DIR={fastbn.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
            *extra,
        ]
    )
    run([cmake, "--build", build])


def test_cpp_unit_tests_against_the_installed_package(tmp_path):
    build = tmp_path / "cpp-tests"
    configure_and_build(HERE / "cpp", build)
    ctest = str(Path(cmake_exe()).with_name("ctest"))
    out = run([ctest, "--test-dir", build, "--output-on-failure"], env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert "100% tests passed" in out


# ------------------------------------------------------------------------------------------------------------
# examples/cpp and examples/c: out-of-tree consumers, compared with the Python API on the same data

ROOT = HERE.parent


def example_inputs():
    k = np.arange(8 * 4 * 5 * 6, dtype=np.int64)
    x = ((k * 7919 + 13) % 2003).astype(np.float32) / np.float32(256) - np.float32(4)
    dy = ((k * 104729 + 7) % 1999).astype(np.float32) / np.float32(512) - np.float32(2)
    gamma = np.array([1.0, 0.5, -2.0, 1.25], np.float32)
    beta = np.array([0.0, 1.0, -0.5, 3.0], np.float32)
    return x.reshape(8, 4, 5, 6), dy.reshape(8, 4, 5, 6), gamma, beta


def python_report():
    x, dy, gamma, beta = example_inputs()
    y, mean, var = fastbn.batch_norm_train(x, gamma, beta)
    dx, dgamma, dbeta = fastbn.batch_norm_backward(dy, x, mean, var, gamma)
    y_infer = fastbn.batch_norm_infer(x, mean, var, gamma, beta)
    f64 = np.float64
    return {
        "mean": mean,
        "var": var,
        "dgamma": dgamma,
        "dbeta": dbeta,
        "y_sum": y.astype(f64).sum(),
        "y_abs_sum": np.abs(y.astype(f64)).sum(),
        "dx_abs_sum": np.abs(dx.astype(f64)).sum(),
        "y_infer_abs_sum": np.abs(y_infer.astype(f64)).sum(),
    }


def assert_same_numbers(native: dict, python: dict):
    assert native["simd"] == fastbn.get_simd()
    for key, want in python.items():
        np.testing.assert_allclose(np.asarray(native[key], dtype=np.float64), want, rtol=1e-6, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("language", ["cpp", "c"])
def test_example_builds_with_find_package_and_matches_python(tmp_path, language):
    build = tmp_path / f"example-{language}"
    configure_and_build(ROOT / "examples" / language, build)
    exe = build / f"fastbn_example_{language}"
    out = run([exe])
    assert_same_numbers(json.loads(out), python_report())


def pkg_config(pc_file: Path, field: str) -> list[str]:
    """Cflags or Libs of a .pc file, with its variables expanded (no pkg-config binary needed)."""
    variables = {"pcfiledir": str(pc_file.parent)}

    def expand(text):
        return re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], text)

    for line in pc_file.read_text().splitlines():
        m = re.match(r"^(\w+)=(.*)$", line)
        if m:
            variables[m.group(1)] = expand(m.group(2).strip())
        elif line.startswith(field + ":"):
            return shlex.split(expand(line.split(":", 1)[1]))
    raise AssertionError(f"{field} not in {pc_file}")


def test_pkg_config_file_links_the_c_example(tmp_path):
    pc = Path(fastbn.get_library_dir()) / "pkgconfig" / "fastbn.pc"
    assert pc.is_file()
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed"
    exe = tmp_path / "example_pc"
    run(
        [
            cc,
            "-std=c99",
            *pkg_config(pc, "Cflags"),
            str(ROOT / "examples" / "c" / "main.c"),
            "-o",
            str(exe),
            *pkg_config(pc, "Libs"),
        ]
    )
    assert_same_numbers(json.loads(run([exe])), python_report())
