"""``python -m fastbn bench``: fastbn against PyTorch and NumPy, and against the machine's copy bandwidth.

Batch norm is memory-bound, so the yardstick is a copy: B = 2 * S_copy / t_copy for a multithreaded copy (with
streaming stores) of a large buffer, measured in the same run. Each pass has a minimal traffic (bytes it must
move): training forward and inference read x and write y (2S), backward reads x and dy and writes dx (3S).
The roofline fraction (minimal traffic / t) / B is 1.0 at the limit. Since a tensor that fits a large
last-level cache can beat a copy of a buffer that does not, each case also gets a second yardstick: the same
streaming copy of a buffer of S bytes, timed alongside ("vs S-copy": minimal traffic / t over 2S / t_copy).

Timings are medians of ``--repeat`` samples after warm-ups, all in this process; fastbn, PyTorch and NumPy are
interleaved sample by sample, in a rotating order, so that drifts of a shared machine hit them alike. Each sample
runs the call enough times to last at least a millisecond, so tiny shapes are timed too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

import fastbn

DEFAULT_SHAPES = ["64x128x56x56", "256x256x14x14", "8192x1024", "32x64x8x8", "64x256"]
DTYPES = ["float32", "float64"]
DEFAULT_REPEAT = 11
# --quick: one medium tensor in both layouts, a 2-D one and a tiny one, float32, few samples: a smoke run of
# every code path of the full run in a few seconds, too short for its numbers to mean much.
QUICK_SHAPES = ["32x64x28x28", "4096x256", "32x64x8x8"]
QUICK_DTYPES = ["float32"]
QUICK_REPEAT = 5
PASSES = ["train", "infer", "backward"]
TRAFFIC = {"train": 2, "infer": 2, "backward": 3}  # multiples of S = bytes of x
COPY_BYTES = 256 << 20


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
    torch_ms: float | None = None
    numpy_ms: float | None = None
    gbs: float = 0.0  # minimal traffic / fastbn_ms
    roofline: float = 0.0  # gbs / copy bandwidth
    copy_ms: float = 0.0  # the streaming copy of S bytes, timed alongside
    copy_fraction: float = 0.0  # gbs / (2S / copy_ms)
    speedup: float | None = None  # torch_ms / fastbn_ms
    fresh_speedup: float | None = None  # torch_ms / fresh_ms
    extra: dict[str, float] = field(default_factory=dict)


def parse_shape(text: str):
    try:
        shape = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is written like 64x128x56x56, got {text!r}") from None
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a shape needs at least 2 dimensions >= 1, got {text!r}")
    return shape


def comma_list(choices):
    def parse(text: str):
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}; got {text!r}")
        return items

    return parse


def thread_list(text: str):
    try:
        items = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"threads are a comma-separated list of ints, got {text!r}") from None
    if not items or min(items) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return items


def int_at_least(low: int, why: str = ""):
    """An argparse type: an integer >= low; ``why`` is added to the message when it is not."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}{why}, got {text!r}")
        return value

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the bench options to ``p``. Options that ``--quick`` presets default to None here and are filled in
    by :func:`apply_preset`, so that a value given on the command line wins over the preset."""
    p.add_argument(
        "--shapes",
        type=lambda s: [parse_shape(t) for t in s.split(",")],
        default=None,
        help="comma-separated shapes, channels on axis 1; 2-D shapes are (N, C) "
        f"(default: {','.join(DEFAULT_SHAPES)}; with --quick: {','.join(QUICK_SHAPES)})",
    )
    p.add_argument(
        "--passes",
        type=comma_list(PASSES),
        default=PASSES,
        help=f"comma-separated passes to time, from {', '.join(PASSES)} (default: {','.join(PASSES)})",
    )
    p.add_argument(
        "--layouts",
        type=comma_list(["nchw", "nhwc"]),
        default=["nchw", "nhwc"],
        help="memory layouts of the shapes with spatial dimensions: nchw, nhwc (channels last) or both "
        "(default: nchw,nhwc)",
    )
    p.add_argument(
        "--dtypes",
        type=comma_list(DTYPES),
        default=None,
        help=f"float32, float64 or both (default: {','.join(DTYPES)}, float64 on shapes of 2^20 elements or more "
        f"only unless listed alone; with --quick: {','.join(QUICK_DTYPES)})",
    )
    p.add_argument(
        "--threads",
        type=thread_list,
        default=None,
        help="comma-separated thread counts, each case timed with each "
        f"(default: fastbn.get_num_threads(), {fastbn.get_num_threads()} here)",
    )
    p.add_argument(
        "--repeat",
        type=int_at_least(3, " (the median of fewer samples is noise)"),
        default=None,
        help=f"timed samples per measurement, >= 3; the median is reported (default: {DEFAULT_REPEAT}; "
        f"with --quick: {QUICK_REPEAT})",
    )
    p.add_argument(
        "--warmup", type=int_at_least(0), default=2, help="untimed calls before timing each function (default: 2)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a short smoke run: shapes {','.join(QUICK_SHAPES)}, {','.join(QUICK_DTYPES)}, --repeat "
        f"{QUICK_REPEAT}; --shapes, --dtypes and --repeat given as well win (default: off, the full run)",
    )
    p.add_argument(
        "--no-torch", action="store_true", help="skip the PyTorch comparison (default: compare when torch imports)"
    )
    p.add_argument("--no-numpy", action="store_true", help="skip the NumPy comparison (default: compare)")
    p.add_argument("--json", metavar="PATH", help="also write the raw numbers as JSON to PATH (default: no file)")
    p.add_argument(
        "--plot",
        metavar="PATH.png",
        help="draw the roofline fraction per case into PATH.png; needs matplotlib (default: no plot)",
    )
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cpu, or cuda for the CUDA kernels against PyTorch's (default: cpu)",
    )


def apply_preset(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the options left unset (None) from the full run's defaults or, with ``--quick``, the preset."""
    quick = getattr(args, "quick", False)
    if args.shapes is None:
        args.shapes = [parse_shape(s) for s in (QUICK_SHAPES if quick else DEFAULT_SHAPES)]
    if args.dtypes is None:
        args.dtypes = list(QUICK_DTYPES if quick else DTYPES)
    if args.repeat is None:
        args.repeat = QUICK_REPEAT if quick else DEFAULT_REPEAT
    return args


# ----------------------------------------------------------------------------------------------------------
# Timing


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


def time_interleaved(fns: dict[str, Callable[[], object]], repeat: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per call of each function, sampling them in turn."""
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
            samples[k].append((time.perf_counter() - t) / n)
    return {k: float(np.median(v)) * 1e3 for k, v in samples.items()}


def copy_bandwidth(repeat: int = 15, nbytes: int = COPY_BYTES) -> float:
    """GB/s of fastbn's multithreaded streaming copy of a large buffer (read + write)."""
    src = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    ms = time_interleaved({"copy": lambda: fastbn._core.stream_copy(src, dst)}, repeat, 2)["copy"]
    return 2 * src.nbytes / (ms * 1e-3) / 1e9


# ----------------------------------------------------------------------------------------------------------
# Cases


def _layouts_for(shape, layouts):
    if len(shape) == 2:
        return ["nc"]
    return [lay for lay in layouts]


def _make(shape, layout, dtype, rng):
    """x in the given memory layout, its channel axis, and a torch view of it (logically NCHW)."""
    if layout == "nhwc":
        phys = (shape[0], *shape[2:], shape[1])
        x = rng.standard_normal(phys, dtype=np.float32).astype(dtype, copy=False)
        return x, -1
    x = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
    return x, 1


def _numpy_fns(x, axis, gamma, beta, dy, eps=1e-5):
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    bshape = [1] * x.ndim
    bshape[axis] = -1
    g = gamma.reshape(bshape)
    b = beta.reshape(bshape)
    n = x.size // x.shape[axis]

    def train():
        m = x.mean(axis=axes, keepdims=True)
        v = x.var(axis=axes, keepdims=True)
        return (x - m) / np.sqrt(v + eps) * g + b

    m = x.mean(axis=axes, keepdims=True)
    v = x.var(axis=axes, keepdims=True)

    def infer():
        return (x - m) / np.sqrt(v + eps) * g + b

    def backward():
        inv = 1 / np.sqrt(v + eps)
        xhat = (x - m) * inv
        db = dy.sum(axis=axes, keepdims=True)
        dg = (dy * xhat).sum(axis=axes, keepdims=True)
        return g * inv * (dy - db / n - xhat * dg / n)

    return {"train": train, "infer": infer, "backward": backward}


def _torch_fns(torch, x, axis, gamma, beta, dy, eps=1e-5):
    if x.ndim > 2 and axis == -1:  # NHWC memory -> torch's channels_last tensor
        perm = (0, x.ndim - 1, *range(1, x.ndim - 1))
        xt = torch.from_numpy(x).permute(*perm)
        dyt = torch.from_numpy(dy).permute(*perm)
    else:
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    w, b = torch.from_numpy(gamma), torch.from_numpy(beta)
    c = gamma.shape[0]
    rm = torch.zeros(c, dtype=xt.dtype)
    rv = torch.ones(c, dtype=xt.dtype)
    _, save_mean, save_invstd = torch.ops.aten.native_batch_norm(xt, w, b, rm, rv, True, 0.1, eps)
    fb = torch.nn.functional.batch_norm
    return {
        "train": lambda: fb(xt, rm, rv, w, b, training=True, momentum=0.1, eps=eps),
        "infer": lambda: fb(xt, rm, rv, w, b, training=False, eps=eps),
        "backward": lambda: torch.ops.aten.native_batch_norm_backward(
            dyt, xt, w, rm, rv, save_mean, save_invstd, True, eps, [True, True, True]
        ),
    }


def _fastbn_fns(x, axis, gamma, beta, dy, eps=1e-5):
    y = np.empty_like(x)
    dx = np.empty_like(x)
    _, mean, var = fastbn.batch_norm_train(x, gamma, beta, axis=axis, eps=eps)
    steady = {
        "train": lambda: fastbn.batch_norm_train(x, gamma, beta, axis=axis, eps=eps, out=y),
        "infer": lambda: fastbn.batch_norm_infer(x, mean, var, gamma, beta, axis=axis, eps=eps, out=y),
        "backward": lambda: fastbn.batch_norm_backward(dy, x, mean, var, gamma, axis=axis, eps=eps, out=dx),
    }
    fresh = {
        "train": lambda: fastbn.batch_norm_train(x, gamma, beta, axis=axis, eps=eps),
        "infer": lambda: fastbn.batch_norm_infer(x, mean, var, gamma, beta, axis=axis, eps=eps),
        "backward": lambda: fastbn.batch_norm_backward(dy, x, mean, var, gamma, axis=axis, eps=eps),
    }
    return steady, fresh


def _copy_fn(x):
    """The streaming copy of x's bytes, the per-case yardstick."""
    src = x.reshape(-1).view(np.float32)
    dst = np.empty_like(src)
    return lambda: fastbn._core.stream_copy(src, dst)


def _cases(args):
    for shape in args.shapes:
        big = int(np.prod(shape)) >= 1 << 20
        for layout in _layouts_for(shape, args.layouts):
            for dtype in args.dtypes:
                # float64 is reported on the big shapes; listing it alone runs it everywhere.
                if dtype == "float64" and len(args.dtypes) > 1 and not big:
                    continue
                yield shape, layout, dtype


def _progress(total: int):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc="bench", unit="case", file=sys.stderr, leave=False)
    except ImportError:

        class Plain:
            def __init__(self):
                self.n = 0

            def update(self, k=1):
                self.n += k
                print(f"bench: {self.n}/{total} cases", file=sys.stderr)

            def set_postfix_str(self, s):
                pass

            def close(self):
                pass

        return Plain()


def run_cpu(args, torch) -> dict:
    rng = np.random.default_rng(0)
    threads = args.threads or [fastbn.get_num_threads()]
    saved_threads = fastbn.get_num_threads()
    fastbn.set_num_threads(max(threads))
    bw_start = copy_bandwidth()
    cases = list(_cases(args))
    bar = _progress(len(cases) * len(threads) * len(args.passes))
    results: list[Result] = []
    try:
        for shape, layout, dtype in cases:
            x, axis = _make(shape, layout, np.dtype(dtype), rng)
            dy = rng.standard_normal(x.shape, dtype=np.float32).astype(dtype, copy=False)
            c = shape[1]
            gamma = (rng.random(c) + 0.5).astype(dtype)
            beta = rng.standard_normal(c).astype(dtype)
            steady, fresh = _fastbn_fns(x, axis, gamma, beta, dy)
            copy = _copy_fn(x)
            tfns = _torch_fns(torch, x, axis, gamma, beta, dy) if torch is not None else {}
            nfns = _numpy_fns(x, axis, gamma, beta, dy) if not args.no_numpy else {}
            for t in threads:
                fastbn.set_num_threads(t)
                if torch is not None:
                    torch.set_num_threads(t)
                for pass_ in args.passes:
                    bar.set_postfix_str(f"{'x'.join(map(str, shape))} {layout} {pass_} {dtype} {t}T")
                    fns = {"fastbn": steady[pass_], "fresh": fresh[pass_], "copy": copy}
                    if pass_ in tfns:
                        fns["torch"] = tfns[pass_]
                    ms = time_interleaved(fns, args.repeat, args.warmup)
                    if pass_ in nfns:  # slow: fewer samples, timed on its own
                        ms["numpy"] = time_interleaved({"numpy": nfns[pass_]}, min(3, args.repeat), 1)["numpy"]
                    r = Result(
                        shape="x".join(map(str, shape)),
                        layout=layout,
                        pass_=pass_,
                        dtype=dtype,
                        threads=t,
                        mbytes=x.nbytes / 1e6,
                        fastbn_ms=ms["fastbn"],
                        fresh_ms=ms["fresh"],
                        torch_ms=ms.get("torch"),
                        numpy_ms=ms.get("numpy"),
                    )
                    r.gbs = TRAFFIC[pass_] * x.nbytes / (r.fastbn_ms * 1e-3) / 1e9
                    r.roofline = r.gbs / bw_start
                    r.copy_ms = ms["copy"]
                    r.copy_fraction = TRAFFIC[pass_] / 2 * r.copy_ms / r.fastbn_ms
                    if r.torch_ms is not None:
                        r.speedup = r.torch_ms / r.fastbn_ms
                        r.fresh_speedup = r.torch_ms / r.fresh_ms
                    results.append(r)
                    bar.update(1)
    finally:
        bar.close()
        fastbn.set_num_threads(saved_threads)
    fastbn.set_num_threads(max(threads))
    bw_end = copy_bandwidth()
    fastbn.set_num_threads(saved_threads)
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": _machine(),
        "fastbn": fastbn.build_info(),
        "torch": getattr(torch, "__version__", None),
        "numpy": np.__version__,
        "copy_bandwidth_gbs": bw_start,
        "copy_bandwidth_end_gbs": bw_end,
        "repeat": args.repeat,
        "results": [asdict(r) for r in results],
    }


def _machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.platform()}


# ----------------------------------------------------------------------------------------------------------
# Report


def _fmt(v, spec=".2f", none="-"):
    return none if v is None else format(v, spec)


def format_table(report: dict) -> str:
    rows = report["results"]
    head = [
        "shape",
        "layout",
        "pass",
        "dtype",
        "thr",
        "fastbn ms",
        "fresh ms",
        "torch ms",
        "numpy ms",
        "speed-up",
        "fresh x",
        "GB/s",
        "roofline",
        "vs S-copy",
    ]
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
                _fmt(r["numpy_ms"], ".1f"),
                _fmt(r["speedup"], ".1f") + ("x" if r["speedup"] else ""),
                _fmt(r["fresh_speedup"], ".1f") + ("x" if r["fresh_speedup"] else ""),
                _fmt(r["gbs"], ".1f"),
                _fmt(r["roofline"], ".2f"),
                _fmt(r.get("copy_fraction") or None, ".2f"),
            ]
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = [
        f"fastbn {report['fastbn']['version']} ({report['fastbn']['simd']}, {report['machine']['cpu']}, "
        f"{report['machine']['cores']} cores), torch {report['torch'] or 'not installed'}, {report['date']}",
        f"copy bandwidth B = {report['copy_bandwidth_gbs']:.1f} GB/s at the start, "
        f"{report['copy_bandwidth_end_gbs']:.1f} GB/s at the end (streaming copy of {COPY_BYTES >> 20} MB); "
        f"minimal traffic: train/infer 2S, backward 3S; medians of {report['repeat']} samples",
        "",
    ]
    for i, row in enumerate(lines):
        out.append("  ".join(c.rjust(w) if j >= 4 else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    labels = [f"{r['shape']} {r['layout']} {r['pass_']} {r['dtype'][-2:]} {r['threads']}T" for r in rows]
    values = [r["roofline"] for r in rows]
    colors = {"train": "tab:blue", "infer": "tab:green", "backward": "tab:orange"}
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(rows) + 1.5))
    ax.barh(range(len(rows)), values, color=[colors[r["pass_"]] for r in rows])
    ax.axvline(1.0, color="k", lw=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    bw = report["copy_bandwidth_gbs"]
    ax.set_xlabel(f"roofline fraction (minimal traffic / time) / copy bandwidth {bw:.0f} GB/s")
    ax.set_title(f"fastbn {report['fastbn']['version']} on {report['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> int:
    apply_preset(args)
    if args.device == "cuda":
        from . import _bench_cuda

        return _bench_cuda.run(args)
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print(
                "fastbn bench: PyTorch is not installed, so there is no PyTorch column "
                "(pip install 'fastbn[bench]' pins torch==2.13.0)",
                file=sys.stderr,
            )
    report = run_cpu(args, torch)
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"\nraw numbers: {args.json}")
    if args.plot:
        try:
            plot(report, args.plot)
            print(f"plot: {args.plot}")
        except ImportError:
            print("fastbn bench: --plot needs matplotlib (pip install 'fastbn[bench]')", file=sys.stderr)
            return 1
    return 0
