"""The README's C and C++ quick-start programs, extracted from README.md, built against the INSTALLED package with
the flags of its pkg-config file (the README's build line) and run; their printed statistics and outputs are
checked against a float64 NumPy reference. A snippet is the fenced block after a ``<!-- snippet:LANG -->`` line."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import fastbn

from test_native import pkg_config, run

README = Path(__file__).resolve().parent.parent / "README.md"

# language -> (file suffix, compiler candidates, standard flag)
LANGUAGES = {
    "c": (".c", ("CC", "cc", "gcc"), "-std=c99"),
    "cpp": (".cpp", ("CXX", "c++", "g++"), "-std=c++17"),
}

LINE = re.compile(r"^channel (\d+): mean (\S+) var (\S+) y\[0,(\d+),0,0\] (\S+)$")


def snippet(language: str) -> str:
    """The code of the one fenced block that follows ``<!-- snippet:language -->`` in the README."""
    blocks = re.findall(rf"^<!-- snippet:{language} -->\n```{language}\n(.*?)^```$", README.read_text(), re.S | re.M)
    assert len(blocks) == 1, f"README.md must have exactly one block marked <!-- snippet:{language} -->"
    return blocks[0]


def compiler(env_var: str, *names: str) -> str:
    found = os.environ.get(env_var) or next(filter(None, map(shutil.which, names)), None)
    if not found:
        pytest.fail(f"a compiler ({env_var}, or one of {', '.join(names)}) is needed for the README snippets")
    return found


def reference():
    """Per channel: mean, biased variance and y[0, c, 0, 0], in float64, for the snippets' data (the same
    x[i] = 0.5 * ((7 i) mod 11), gamma and beta as in the README; every value is exact in float32)."""
    n, c, hw = 2, 3, 2 * 2
    x = (0.5 * ((7 * np.arange(n * c * hw)) % 11)).reshape(n, c, hw)
    gamma = np.array([1.0, 2.0, 0.5])
    beta = np.array([0.0, 1.0, -1.0])
    mean = x.mean(axis=(0, 2))
    var = x.var(axis=(0, 2))
    y0 = gamma * (x[0, :, 0] - mean) / np.sqrt(var + 1e-5) + beta
    return np.stack([mean, var, y0], axis=1)


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_readme_snippet_builds_runs_and_prints_the_reference(tmp_path, language):
    suffix, (env_var, *names), std = LANGUAGES[language]
    source = tmp_path / f"quickstart{suffix}"
    source.write_text(snippet(language))
    exe = tmp_path / "quickstart"
    pc = Path(fastbn.get_library_dir()) / "pkgconfig" / "fastbn.pc"
    # -Werror: a quick start that warns is a quick start that looks broken.
    flags = [std, "-Wall", "-Wextra", "-Werror"]
    run([compiler(env_var, *names), *flags, *pkg_config(pc, "Cflags"), source, "-o", exe, *pkg_config(pc, "Libs")])

    lines = run([exe]).splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed) and len(parsed) == 3, f"unexpected output:\n{lines}"
    assert [int(m[1]) for m in parsed] == [int(m[4]) for m in parsed] == [0, 1, 2]
    printed = np.array([[float(m[2]), float(m[3]), float(m[5])] for m in parsed])
    # Printed with 6 decimals, from float32 arithmetic.
    np.testing.assert_allclose(printed, reference(), rtol=1e-5, atol=2e-6)


def python_snippets() -> dict[str, str]:
    """group -> the code of the blocks marked ``<!-- snippet:python GROUP -->``, joined in README order."""
    groups: dict[str, list[str]] = {}
    pattern = r"^<!-- snippet:python (\w+) -->\n```python\n(.*?)^```$"
    for name, code in re.findall(pattern, README.read_text(), re.S | re.M):
        groups.setdefault(name, []).append(code)
    return {name: "\n".join(blocks) for name, blocks in groups.items()}


def test_readme_has_the_python_quick_starts():
    assert set(python_snippets()) == {"quickstart", "torch", "sync"}


@pytest.mark.parametrize("group", ["quickstart", "torch", "sync"])
def test_readme_python_snippets_run_as_written(tmp_path, group):
    """Each quick start runs as written in a fresh interpreter (the scale-out one as a single MPI process)."""
    script = tmp_path / f"readme_{group}.py"  # not torch.py: that would shadow the package
    script.write_text(python_snippets()[group])
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
