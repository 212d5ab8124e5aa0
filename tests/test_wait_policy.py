"""fastbn makes OpenMP's idle threads spin only briefly (about a wake-up's cost) unless the user chose a policy
(issue 9, section 4: a waiter spinning for libgomp's default 7 ms while sharing a CPU with the thread that has the
work turned 0.02 ms calls into 4-40 ms ones; never spinning made every call pay a wake-up). The
policy reaches OpenMP only while it initialises, so each case runs in a fresh interpreter and reads what
libgomp reports with OMP_DISPLAY_ENV. Nothing is timed here; benchmarks/first_call.py measures the effect."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import fastbn

pytestmark = pytest.mark.skipif(not fastbn.build_info()["openmp"], reason="built without OpenMP")

CHOICES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_DISPLAY_ENV")


def openmp_settings(**env):
    """libgomp's reported settings after `import fastbn` in a fresh interpreter, and OMP_WAIT_POLICY as the
    process's environment has it afterwards (with GOMP_SPINCOUNT)."""
    base = {k: v for k, v in os.environ.items() if k not in CHOICES}
    code = "import os, fastbn; print(*(os.environ.get(k, '<unset>') for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, "OMP_DISPLAY_ENV": "verbose", **env},
    )
    assert out.returncode == 0, out.stderr
    if "GOMP_SPINCOUNT" not in out.stderr:
        pytest.skip("the OpenMP runtime is not libgomp (no GOMP_SPINCOUNT in OMP_DISPLAY_ENV's report)")
    lines = [line.strip().replace("'", "") for line in out.stderr.splitlines()]
    settings = dict(line.split(" = ", 1) for line in lines if " = " in line)
    return settings, out.stdout.strip()


def test_idle_threads_spin_briefly_by_default():
    settings, after = openmp_settings()
    assert settings["GOMP_SPINCOUNT"] == fastbn._SPIN_COUNT == "2000"  # libgomp's own default: 300000
    assert after == "<unset> <unset>"  # set only while the runtime read it: not passed on to other programs


@pytest.mark.parametrize(
    "env,spincount",
    [({"OMP_WAIT_POLICY": "active"}, "30000000000"), ({"GOMP_SPINCOUNT": "12345"}, "12345")],
)
def test_a_policy_the_user_chose_is_kept(env, spincount):
    settings, after = openmp_settings(**env)
    assert settings["GOMP_SPINCOUNT"] == spincount
    assert after == f"{env.get('OMP_WAIT_POLICY', '<unset>')} {env.get('GOMP_SPINCOUNT', '<unset>')}"
