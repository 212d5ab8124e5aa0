"""Where the time of a pass goes, without hardware counters: each training forward split into its
normalization pass (timed as an inference on the same tensor) and its statistics pass (the rest), and each
batch-statistics backward set beside the frozen-statistics backward, which makes a single 3S pass over the same
data. Fractions are against a 256 MB streaming copy timed in the same run. Nothing else runs in between, so
tensors that fit the last-level cache stay there (unlike in `python -m fastbn bench`, which interleaves PyTorch).

    python benchmarks/decompose.py [--cases 64x128x56x56/nchw,8192x1024/nc] [--repeat 11]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastbn
from fastbn.bench import case_list, int_at_least

CASES = "64x128x56x56/nchw,256x256x14x14/nchw,64x128x56x56/nhwc,8192x1024/nc"


def median_ms(fn, repeat=11):
    fn()
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=case_list(("nchw", "nhwc", "nc")), default=CASES,
                    help=f"comma-separated SHAPE/LAYOUT (default {CASES})")  # fmt: skip
    ap.add_argument("--repeat", type=int_at_least(1), default=11, help="samples per pass (default 11)")
    args = ap.parse_args()
    src = np.random.default_rng(0).random(64 << 20, dtype=np.float32)
    dst = np.empty_like(src)
    bw = 2 * src.nbytes / median_ms(lambda: fastbn._core.stream_copy(src, dst)) / 1e6
    print(f"fastbn {fastbn.__version__} ({fastbn.get_simd()}, {fastbn.get_num_threads()} threads); B = {bw:.1f} GB/s")
    rng = np.random.default_rng(1)
    for shape, layout in args.cases:
        print(case(shape, layout, bw, rng, args.repeat))


def case(shape, layout, bw, rng, repeat) -> str:
    axis = -1 if layout == "nhwc" else 1
    phys = (shape[0], *shape[2:], shape[1]) if layout == "nhwc" else shape
    x = rng.standard_normal(phys, dtype=np.float32)
    dy = rng.standard_normal(phys, dtype=np.float32)
    c = shape[1]
    g, b = np.ones(c, np.float32), np.zeros(c, np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)
    _, m, v = fastbn.batch_norm_train(x, g, b, axis=axis)
    s = x.nbytes / 1e6
    train = median_ms(lambda: fastbn.batch_norm_train(x, g, b, axis=axis, out=y), repeat)
    infer = median_ms(lambda: fastbn.batch_norm_infer(x, m, v, g, b, axis=axis, out=y), repeat)
    back = median_ms(lambda: fastbn.batch_norm_backward(dy, x, m, v, g, axis=axis, out=dx), repeat)
    frozen = median_ms(lambda: fastbn.batch_norm_backward(dy, x, m, v, g, axis=axis, out=dx, batch_stats=False), repeat)
    return (
        f"{'x'.join(map(str, shape)) + ' ' + layout:18s} train {train:.2f} ms ({2 * s / train / bw:.2f}) = "
        f"normalize {infer:.2f} + statistics {train - infer:.2f} ({s / (train - infer):.0f} GB/s read) | "
        f"backward {back:.2f} ms ({3 * s / back / bw:.2f}); one-pass frozen-statistics backward "
        f"{frozen:.2f} ms ({3 * s / frozen / bw:.2f})"
    )


if __name__ == "__main__":
    main()
