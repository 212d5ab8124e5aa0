"""What the CPU and the CUDA benchmarks share: the result record, interleaved timing with paired ratios, the
traffic floors of each layout, the list of cases and the table. Below bench.py and _bench_cuda.py."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

TRAFFIC = {"train": 2, "infer": 2, "backward": 3}  # the least any layout must move, in multiples of S

# The floor of each pass by layout, in multiples of S (bytes of x). NCHW/NCL: a channel fits in cache, so its
# second read comes from there. Channels-last and 2-D out of cache: every channel's statistics need the whole
# tensor, so a training forward reads x twice (3S) and a backward reads dy and x twice (5S).
FLOORS = {
    "nchw": {"train": 2, "infer": 2, "backward": 3},
    "nc": {"train": 3, "infer": 2, "backward": 5},
    "nhwc": {"train": 3, "infer": 2, "backward": 5},
}
# Yardsticks: the streaming copy of S bytes moves 2S; the two-reads-one-write stream 3S; 5S is both in turn.
YARDSTICK_OF_FLOOR = {2: ("copy",), 3: ("add",), 5: ("copy", "add")}
# The reads of each floor, in multiples of S: where a machine reads slower than it writes (reads its limit), the
# pass cannot beat this many reads of S bytes (the read yardstick, a sum that writes nothing), whatever its floor.
READS = {
    "nchw": {"train": 1, "infer": 1, "backward": 2},
    "nc": {"train": 2, "infer": 1, "backward": 4},
    "nhwc": {"train": 2, "infer": 1, "backward": 4},
}


@dataclass
class Result:
    shape: str
    layout: str
    pass_: str
    dtype: str
    threads: int
    mbytes: float  # S, the size of x in MB
    fastbn_ms: float  # with out= buffers (steady state)
    fresh_ms: float  # a new output every call, as PyTorch does
    torch_ms: float | None = None  # a new output every call (torch.nn.functional.batch_norm, ...)
    torch_out_ms: float | None = None  # into preallocated outputs (torch.ops.aten.native_batch_norm.out, ...)
    numpy_ms: float | None = None
    gbs: float = 0.0  # least traffic of any layout (TRAFFIC) / fastbn_ms
    roofline: float = 0.0  # gbs / copy bandwidth of a large buffer
    copy_ms: float = 0.0  # the streaming copy of S bytes, timed alongside
    copy_fraction: float = 0.0  # gbs / (2S / copy_ms)
    floor: int = 0  # this layout's floor in multiples of S (FLOORS)
    floor_fraction: float = 0.0  # median over rounds of (yardstick time of the floor) / (fastbn time)
    reads: int = 0  # the floor's reads in multiples of S (READS)
    read_fraction: float = 0.0  # median over rounds of (reads * read yardstick time) / (fastbn time)
    in_cache: bool = False  # the working set fits in the last-level cache: the fraction is an in-cache one
    speedup: float | None = None  # torch_ms / fastbn_ms
    fresh_speedup: float | None = None  # torch_ms / fresh_ms
    out_speedup: float | None = None  # torch_out_ms / fastbn_ms: both into preallocated outputs
    vs_float32: float | None = None  # fastbn_ms / the same case's float32 fastbn_ms (half precision)
    extra: dict[str, float] = field(default_factory=dict)


def _calibrate(fn: Callable[[], object], min_seconds: float = 1e-3) -> int:
    """Calls per sample so that a sample lasts at least min_seconds."""
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t >= min_seconds or n >= 1 << 16:
            return n
        n *= 4


def time_samples(fns: dict[str, Callable[[], object]], repeat: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per call of each function, one sample per round, the functions taken in turn."""
    loops = {}
    for k, fn in fns.items():
        for _ in range(warmup):
            fn()
        loops[k] = _calibrate(fn)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for i in range(repeat):
        # Rotate the order each round: whoever runs right after another library's threads pays for their
        # spin-down, so no one function should always go first.
        for k in keys[i % len(keys) :] + keys[: i % len(keys)]:
            fn = fns[k]
            n = loops[k]
            t = time.perf_counter()
            for _ in range(n):
                fn()
            samples[k].append((time.perf_counter() - t) / n * 1e3)
    return samples


def time_interleaved(fns: dict[str, Callable[[], object]], repeat: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per call of each function, sampling them in turn."""
    return {k: float(np.median(v)) for k, v in time_samples(fns, repeat, warmup).items()}


def paired(samples: dict[str, list[float]], numerator: tuple[str, ...], denominator: str) -> float:
    """The median over rounds of sum(numerator times) / denominator time (a paired ratio)."""
    rounds = zip(*(samples[k] for k in (*numerator, denominator)))
    return float(np.median([sum(r[:-1]) / r[-1] for r in rounds]))


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache the OS reports (0 when it does not)."""
    best = 0
    for index in range(8):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size") as f:
                text = f.read().strip()
        except OSError:
            break
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        best = max(best, int(text.rstrip("KMG")) * unit)
    return best


def cases(args):
    for shape in args.shapes:
        big = int(np.prod(shape)) >= 1 << 20
        for layout in ["nc"] if len(shape) == 2 else list(args.layouts):
            for dtype in args.dtypes:
                # float64 is reported on the big shapes; listing it alone runs it everywhere.
                if dtype == "float64" and len(args.dtypes) > 1 and not big:
                    continue
                yield shape, layout, dtype


def machine(cpuinfo: str = "/proc/cpuinfo") -> dict[str, object]:
    """The CPU as /proc/cpuinfo names it, with its family and model numbers where it gives them: a VM may name
    only the vendor's line ("AMD EPYC"), and the numbers tell its generations apart (family 25 model 17: Zen 4)."""
    cpu = platform.processor() or platform.machine()
    info: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, sep, value = line.partition(":")
                key = key.strip()
                if not sep:
                    break  # the first processor's block ends
                if key in ("model name", "cpu family", "model"):
                    info.setdefault(key, value.strip())
    except OSError:
        pass
    cpu = info.get("model name", cpu)
    if "cpu family" in info and "model" in info:
        cpu = f"{cpu} (family {info['cpu family']}, model {info['model']})"
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.platform(), "llc_bytes": last_level_cache_bytes()}


def _fmt(v, spec=".2f", none="-"):
    return none if v is None else format(v, spec)


def format_table(report: dict, copy_bytes: int) -> str:
    rows = report["results"]
    head = ["shape", "layout", "pass", "dtype", "thr", "fastbn ms", "fresh ms", "torch ms", "torch out ms",
            "numpy ms", "speed-up", "fresh x", "out= x", "GB/s", "roofline", "floor", "of floor", "of reads",
            "vs f32"]  # fmt: skip
    lines = [head]
    for r in rows:
        lines.append(
            [
                r["shape"],
                r["layout"],
                r["pass_"],
                r["dtype"],
                str(r["threads"]),
                _fmt(r["fastbn_ms"], ".3f"),
                _fmt(r["fresh_ms"], ".3f"),
                _fmt(r["torch_ms"], ".3f"),
                _fmt(r.get("torch_out_ms"), ".3f"),
                _fmt(r["numpy_ms"], ".1f"),
                _fmt(r["speedup"], ".1f") + ("x" if r["speedup"] else ""),
                _fmt(r["fresh_speedup"], ".1f") + ("x" if r["fresh_speedup"] else ""),
                _fmt(r.get("out_speedup"), ".2f") + ("x" if r.get("out_speedup") else ""),
                _fmt(r["gbs"], ".1f"),
                _fmt(r["roofline"], ".2f"),
                f"{r['floor']}S" if r.get("floor") else "-",
                _fmt(r.get("floor_fraction") or None, ".2f") + (" (in LLC)" if r.get("in_cache") else ""),
                _fmt(r.get("read_fraction") or None, ".2f"),
                _fmt(r.get("vs_float32"), ".2f"),
            ]
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    m = report["machine"]
    out = [
        f"fastbn {report['fastbn']['version']} ({report['fastbn']['simd']}, {m['cpu']}, {m['cores']} cores), "
        f"torch {report['torch'] or 'not installed'}, {report['date']}",
        f"copy bandwidth B = {report['copy_bandwidth_gbs']:.1f} GB/s at the start, "
        f"{report['copy_bandwidth_end_gbs']:.1f} GB/s at the end (streaming copy of {copy_bytes >> 20} MB); "
        f"medians of {report['repeat']} samples. roofline: least traffic (train/infer 2S, backward 3S) / time / B. "
        "of floor: this layout's floor (NCHW 2S/2S/3S; NHWC and 2-D 3S/2S/5S) timed as a streaming copy (2S) or "
        "2-reads-1-write stream (3S) of S bytes interleaved with the call, over its time (median of paired "
        "ratios); (in LLC): the working set fits the last-level cache (8 MiB where it does not keep 16 MiB of "
        "writes, fastbn._core.cache_keeps_writes()). of reads: the floor's reads alone (NCHW "
        "1S/1S/2S; NHWC and 2-D 2S/1S/4S) timed as a sum of S bytes that writes nothing, over the call's time: "
        "where reads are the machine's limit, 1.0 is that limit",
        "",
    ]
    for i, row in enumerate(lines):
        out.append("  ".join(c.rjust(w) if j >= 4 else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    fused = report.get("fused")
    if fused:
        out += ["", "Fused batch norm + residual + ReLU (float32): ratios of times, lower is better for the first two",
                ""]  # fmt: skip
        fh = ["shape", "layout", "thr", "fwd fused/plain", "bwd fused/plain", "unfused/fused fwd",
              "unfused/fused bwd", "torch/fused fwd", "torch/fused bwd", "fused fwd ms", "fused bwd ms"]  # fmt: skip
        flines = [fh] + [
            [f["shape"], f["layout"], str(f["threads"]), _fmt(f["fwd_vs_plain"]), _fmt(f["bwd_vs_plain"]),
             _fmt(f["unfused_fwd_speedup"]), _fmt(f["unfused_bwd_speedup"]), _fmt(f.get("torch_fwd_speedup")),
             _fmt(f.get("torch_bwd_speedup")), _fmt(f["fused_fwd_ms"], ".3f"), _fmt(f["fused_bwd_ms"], ".3f")]
            for f in fused
        ]  # fmt: skip
        fw = [max(len(row[i]) for row in flines) for i in range(len(fh))]
        for i, row in enumerate(flines):
            out.append("  ".join(c.rjust(w) if j >= 3 else c.ljust(w) for j, (c, w) in enumerate(zip(row, fw))))
            if i == 0:
                out.append("  ".join("-" * w for w in fw))
    return "\n".join(out)
