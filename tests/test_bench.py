"""The bench command runs and reports (its numbers are never asserted: timings belong in notes, not tests)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

import fastbn
from fastbn import bench
from fastbn.__main__ import main


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


def bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fastbn bench")
    bench.add_arguments(parser)
    return parser


def test_bench_help_gives_every_option_a_description_and_its_default(capsys):
    for action in bench_parser()._actions:
        if action.dest == "help":
            continue
        assert action.help and "default" in action.help, f"{action.option_strings} needs a help text with its default"
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--help"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert "--quick" in printed and "(default: 11; with --quick: 5)" in " ".join(printed.split())


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--repeat", "1"],
            "argument --repeat: must be an integer >= 3 (the median of fewer samples is noise), got '1'",
        ),
        (["--repeat", "many"], "argument --repeat: must be an integer >= 3"),
        (["--warmup", "-1"], "argument --warmup: must be an integer >= 0, got '-1'"),
    ],
)
def test_bench_bad_numbers_are_usage_errors(capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m fastbn bench ")
    assert f"python -m fastbn bench: error: {message}" in err


def test_bench_quick_presets_shapes_dtypes_and_repeat_and_explicit_values_win():
    full = bench.apply_preset(bench_parser().parse_args([]))
    assert (full.shapes, full.dtypes, full.repeat) == (
        [bench.parse_shape(s) for s in bench.DEFAULT_SHAPES],
        bench.DTYPES,
        11,
    )
    quick = bench.apply_preset(bench_parser().parse_args(["--quick"]))
    assert quick.shapes == [bench.parse_shape(s) for s in bench.QUICK_SHAPES]
    assert (quick.dtypes, quick.repeat) == (["float32"], 5)
    assert len(quick.shapes) < len(full.shapes) and quick.repeat < full.repeat
    mine = bench.apply_preset(
        bench_parser().parse_args(["--quick", "--repeat", "7", "--shapes", "8x3", "--dtypes", "float64"])
    )
    assert (mine.shapes, mine.dtypes, mine.repeat) == ([(8, 3)], ["float64"], 7)


def test_bench_quick_runs_the_preset(tmp_path):
    out = tmp_path / "quick.json"
    r = run_cli("--quick", "--passes", "infer", "--threads", "1", "--no-torch", "--no-numpy", "--json", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["repeat"] == bench.QUICK_REPEAT
    assert {row["shape"] for row in report["results"]} == set(bench.QUICK_SHAPES)
    assert {row["dtype"] for row in report["results"]} == {"float32"}


def test_bench_reports_floors_half_ratios_and_the_fused_table(tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli("--shapes", "8x4x6x6,64x8", "--repeat", "3", "--dtypes", "float32,bfloat16,float16", "--threads",
                "1", "--no-torch", "--no-numpy", "--fused", "--json", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "of floor" in r.stdout and "of reads" in r.stdout and "Fused batch norm + residual + ReLU" in r.stdout
    report = json.loads(out.read_text())
    floors = {(row["layout"], row["pass_"]): row["floor"] for row in report["results"]}
    assert floors[("nchw", "train")] == 2 and floors[("nchw", "backward")] == 3
    assert floors[("nhwc", "train")] == 3 and floors[("nc", "backward")] == 5 and floors[("nhwc", "infer")] == 2
    reads = {(row["layout"], row["pass_"]): row["reads"] for row in report["results"]}
    assert reads[("nchw", "train")] == 1 and reads[("nchw", "infer")] == 1 and reads[("nchw", "backward")] == 2
    assert reads[("nhwc", "train")] == 2 and reads[("nc", "backward")] == 4 and reads[("nhwc", "infer")] == 1
    for row in report["results"]:
        assert row["floor_fraction"] > 0 and row["read_fraction"] > 0
        assert (row["vs_float32"] is not None) == (row["dtype"] != "float32")
    fused = report["fused"]
    assert {(f["shape"], f["layout"]) for f in fused} == {("8x4x6x6", "nchw"), ("8x4x6x6", "nhwc"), ("64x8", "nc")}
    for f in fused:
        assert f["fwd_vs_plain"] > 0 and f["unfused_fwd_speedup"] > 0 and f["bwd_vs_plain"] > 0


@pytest.mark.parametrize("n", [0, 1, 15, 17, 16384, 16385, 1 << 20])
def test_read_yardstick_sums_what_it_reads(simd, n):
    """The read yardstick (a sum that writes nothing) reads every value once: its sum is the float64 sum's, to
    float32 rounding, on every SIMD path and thread count, and it leaves its input alone."""
    rng = np.random.default_rng(n)
    x = rng.random(n).astype(np.float32)
    before = x.copy()
    want = float(x.astype(np.float64).sum())
    threads = fastbn.get_num_threads()
    try:
        for t in (1, 2, 3):
            fastbn.set_num_threads(t)
            assert fastbn._core.stream_read(x) == pytest.approx(want, rel=1e-5, abs=1e-6)
    finally:
        fastbn.set_num_threads(threads)
    np.testing.assert_array_equal(x, before)
    with pytest.raises(TypeError, match="src"):
        fastbn._core.stream_read(x.astype(np.float64))


def test_machine_names_the_cpu_with_its_family_and_model(tmp_path):
    """A VM's /proc/cpuinfo may name only the vendor's line; the family and model numbers of the first processor
    go with it into every report."""
    from fastbn._bench_common import machine

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n\n"
        "processor\t: 1\ncpu family\t: 99\nmodel\t\t: 98\nmodel name\t: other\n"
    )
    assert machine(str(cpuinfo))["cpu"] == "AMD EPYC (family 25, model 17)"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\n")
    assert machine(str(cpuinfo))["cpu"] == "Some CPU"
