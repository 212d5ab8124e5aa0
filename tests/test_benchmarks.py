"""Every script in benchmarks/ still runs against this build: each is run once on tiny inputs, in its own process,
and its report is checked for the rows and columns it promises (its numbers are never asserted: timings belong in
notes, not tests). Bad arguments end in a usage error that names the argument. benchmarks/inductor_bn.py is only
checked for its usage: one run compiles five graphs with Inductor, about 80 s on this project's 2-core machines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import mpiexec

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
RESULTS = BENCHMARKS / "results"
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def run(script: str, *args: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [*launcher, sys.executable, str(BENCHMARKS / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r.stdout


def rows(text: str, first: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.startswith(first)]


def test_backward_parts_reports_each_shape():
    out = ok(run("backward_parts.py", "--shapes", "4x8x64,2x16x6x6", "--rounds", "1", "--threads", "1"))
    assert "(r+a)/bwd" in out
    assert [len(r) for r in rows(out, "4x8x64")] == [8] and [len(r) for r in rows(out, "2x16x6x6")] == [8]


def test_cache_probe_counts_one_answer_per_trial():
    out = ok(run("cache_probe.py", "--trials", "2", "--modes", "quiet"))
    (row,) = rows(out, "quiet")
    assert int(row[1]) + int(row[2]) == 2


def test_crowding_times_chosen_and_default_thread_counts():
    out = ok(run("crowding.py", "--threads", "1", "--calls", "3"))
    assert any("chosen" in line for line in out.splitlines()) and any("default" in line for line in out.splitlines())


def test_decompose_splits_each_case():
    out = ok(run("decompose.py", "--cases", "8x16x8x8/nhwc,64x256/nc", "--repeat", "1"))
    assert len(rows(out, "8x16x8x8 nhwc")) == 1 and len(rows(out, "64x256 nc")) == 1
    assert "normalize" in out and "frozen-statistics" in out


def test_dresidual_stream_compares_before_and_now():
    out = ok(run("dresidual_stream.py", "--threads", "1", "--pairs", "2"))
    assert sum("before/now" in line for line in out.splitlines()) >= 2


def test_first_call_runs_its_fresh_processes():
    out = ok(run("first_call.py", "--trials", "1", "--calls", "1", "--steady", "2", "--threads", "1"))
    assert "small 128 KiB" in out and "medium 4 MiB" in out


def test_one_call_times_every_pass():
    out = ok(run("one_call.py", "--threads", "1", "--rounds", "1", "--calls", "1"))
    for pass_ in ("train", "infer", "backward"):
        assert any(pass_ in line for line in out.splitlines()[2:]), pass_


def test_simd_paths_pairs_two_paths():
    import fastbn

    paths = [p for p in ("scalar", "avx2", "avx512", "avx512_bf16") if fastbn._core.simd_supported(p)][-2:]
    out = ok(run("simd_paths.py", "--paths", ",".join(paths), "--dtype", "float32", "--rounds", "1",
                 "--threads", "1", "--shapes", "4x8x4x4"))  # fmt: skip
    assert sum("4x8x4x4" in line and "paired" in line for line in out.splitlines()) == 3


def test_peers_table_and_json(tmp_path):
    path = tmp_path / "peers.json"
    peers = "fastbn,fastbn-out,torch-out"
    out = ok(run("peers.py", "--peers", peers, "--cases", "8x16x4x4/nhwc,16x32/nc", "--repeat", "1",
                 "--threads", "1", "--json", str(path)))  # fmt: skip
    assert len(rows(out, "8x16x4x4 nhwc")) == 3 and len(rows(out, "16x32 nc")) == 3
    report = json.loads(path.read_text())
    assert list(report["peers"]) == peers.split(",")
    assert [(t["case"], t["pass"]) for t in report["table"]] == [
        (case, p) for case in ("8x16x4x4 nhwc", "16x32 nc") for p in ("train", "infer", "backward")
    ]
    assert all(t["speedup_vs_best_peer"] > 0 for t in report["table"])


def test_a_peer_process_loads_nothing_of_fastbn_unless_fastbn_is_the_peer():
    code = (
        f"import json, sys; sys.path.insert(0, {str(BENCHMARKS)!r}); import peers; "
        "peers.main(['--worker', json.dumps(['torch-out', 1, 1, [[[4, 8, 2, 2], 'nchw']]])]); "
        "print('fastbn' in sys.modules, 'torch' in sys.modules)"
    )
    out = ok(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=ENV))
    assert '"4x8x2x2 nchw"' in out and out.split()[-2:] == ["False", "True"]


def test_resnet_runs_and_its_json_renders_as_the_readme_table(tmp_path):
    path = tmp_path / "resnet.json"
    ok(run("resnet.py", "--batch", "2", "--size", "32", "--repeat", "1", "--threads", "1", "--json", str(path)))
    table = ok(run("tables.py", "resnet", str(path)))
    assert table.count("| train |") == 2 and table.count("| eval |") == 2


def test_sync_overhead_over_two_mpi_processes():
    exe = mpiexec()
    assert exe, "no mpiexec: the test extras install the mpich wheel"
    out = ok(run("sync_overhead.py", "--shape", "2x4x4x4", "--repeat", "2", launcher=(exe, "-n", "2")))
    assert "SyncBatchNorm fwd+bwd" in out and "local BatchNorm fwd+bwd" in out


def test_cuda_overhead_says_it_needs_a_gpu_or_runs():
    torch = pytest.importorskip("torch")
    r = run("cuda_overhead.py", "--rounds", "1")
    if torch.cuda.is_available():
        assert "32x64x8x8" in ok(r)
    else:
        assert r.returncode == 1 and "needs a CUDA GPU" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize(
    "kind, files, header",
    [
        ("main", ["cpu-epyc-2core.json"], "| shape | memory | pass | fastbn ms"),
        ("half", ["half-epyc-2core.json"], "| shape | memory | pass | float32 ms"),
        ("fused", ["fused-epyc-2core.json"], "| shape | memory | fused fwd ms"),
        ("resnet", ["resnet-epyc-2core.json"], "| memory | step | stock ms"),
        ("compare", ["cpu-xeon-vm-2core-issue-before.json", "cpu-xeon-vm-2core-issue-after.json"], "| shape |"),
    ],
)
def test_tables_render_the_committed_results(kind, files, header):
    out = ok(run("tables.py", kind, *(str(RESULTS / f) for f in files)))
    assert header in out
    assert ("| NCHW | train |" if kind == "resnet" else "| 64×128×56×56 | NCHW |") in out


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("backward_parts.py", ["--rounds", "0"], "--rounds: must be an integer >= 1"),
        ("backward_parts.py", ["--shapes", "4xa"], "--shapes: a shape is written like"),
        ("cache_probe.py", ["--modes", "quiet,loud"], "--modes: choose from quiet, busy, bursty"),
        ("crowding.py", ["--busy", "-1"], "--busy: must be an integer >= 0"),
        ("decompose.py", ["--cases", "32x64x8x8/nc"], "layout nc is for 2-D shapes"),
        ("decompose.py", ["--cases", "32x64/nwc"], "LAYOUT one of nchw, nhwc, nc"),
        ("dresidual_stream.py", ["--pairs", "1"], "--pairs: must be an integer >= 2"),
        ("first_call.py", ["--trials", "x"], "--trials: must be an integer >= 1"),
        ("inductor_bn.py", ["--repeat", "0"], "--repeat: must be an integer >= 1"),
        ("one_call.py", ["--threads", "0"], "--threads: must be an integer >= 1"),
        ("peers.py", ["--peers", "fastbn,nope"], "--peers: choose from fastbn"),
        ("peers.py", ["--cases", ""], "--cases: expected at least one SHAPE/LAYOUT"),
        ("resnet.py", ["--batch", "0"], "--batch: must be an integer >= 1"),
        ("simd_paths.py", ["--shapes", "8"], "--shapes: a shape needs at least 2 dimensions"),
        ("sync_overhead.py", ["--repeat", "0"], "--repeat: must be an integer >= 1"),
        ("tables.py", ["main", "x.json", "--threads", "0"], "--threads: must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_usage_errors(script, args, message):
    r = run(script, *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
