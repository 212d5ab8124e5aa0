"""The bench command runs and reports (its numbers are never asserted: timings belong in notes, not tests)."""

from __future__ import annotations

import json
import subprocess
import sys


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fastbn", "bench", *args], capture_output=True, text=True, timeout=600)


def test_bench_small_run_writes_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli(
        "--shapes",
        "16x8x6x6,32x5",
        "--passes",
        "train,backward",
        "--repeat",
        "3",
        "--dtypes",
        "float32",
        "--threads",
        "1,2",
        "--json",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert "roofline" in r.stdout and "copy bandwidth" in r.stdout
    report = json.loads(out.read_text())
    rows = report["results"]
    # 16x8x6x6 in NCHW and NHWC, 32x5 as (N, C); two passes; two thread counts.
    assert len(rows) == 3 * 2 * 2
    assert {r["layout"] for r in rows} == {"nchw", "nhwc", "nc"}
    assert {r["threads"] for r in rows} == {1, 2}
    for row in rows:
        assert row["fastbn_ms"] > 0 and row["fresh_ms"] > 0 and row["gbs"] > 0
    assert report["copy_bandwidth_gbs"] > 0


def test_bench_rejects_bad_flags():
    r = run_cli("--shapes", "64")
    assert r.returncode == 2 and "at least 2 dimensions" in r.stderr
    r = run_cli("--passes", "sideways")
    assert r.returncode == 2 and "choose from" in r.stderr
    r = run_cli("--threads", "0")
    assert r.returncode == 2 and ">= 1" in r.stderr
    r = run_cli("--repeat", "1")
    assert r.returncode == 2 and "--repeat" in r.stderr
