"""Native consumers of the INSTALLED package: the C++ unit tests (CTest) built out of tree with
find_package(fastbn) against the wheel's CMake directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

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
    run([cmake, "-S", source, "-B", build, *gen, f"-Dfastbn_DIR={fastbn.get_cmake_dir()}",
         "-DCMAKE_BUILD_TYPE=Release", *extra])
    run([cmake, "--build", build])


def test_cpp_unit_tests_against_the_installed_package(tmp_path):
    build = tmp_path / "cpp-tests"
    configure_and_build(HERE / "cpp", build)
    ctest = str(Path(cmake_exe()).with_name("ctest"))
    out = run([ctest, "--test-dir", build, "--output-on-failure"], env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert "100% tests passed" in out
