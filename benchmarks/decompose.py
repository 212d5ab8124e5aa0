"""Where the time of a pass goes, without hardware counters: each training forward split into its
normalization pass (timed as an inference on the same tensor) and its statistics pass (the rest), and each
batch-statistics backward set beside the frozen-statistics backward, which makes a single 3S pass over the same
data. Fractions are against a 256 MB streaming copy timed in the same run. Nothing else runs in between, so
tensors that fit the last-level cache stay there (unlike in `python -m fastbn bench`, which interleaves PyTorch).

    python benchmarks/decompose.py
"""

from __future__ import annotations

import time

import numpy as np

import fastbn

SHAPES = [((64, 128, 56, 56), "nchw"), ((256, 256, 14, 14), "nchw"), ((64, 128, 56, 56), "nhwc"), ((8192, 1024), "nc")]


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
    src = np.random.default_rng(0).random(64 << 20, dtype=np.float32)
    dst = np.empty_like(src)
    bw = 2 * src.nbytes / median_ms(lambda: fastbn._core.stream_copy(src, dst)) / 1e6
    print(f"fastbn {fastbn.__version__} ({fastbn.get_simd()}, {fastbn.get_num_threads()} threads); B = {bw:.1f} GB/s")
    rng = np.random.default_rng(1)
    for shape, layout in SHAPES:
        print(case(shape, layout, bw, rng))


def case(shape, layout, bw, rng) -> str:
    axis = -1 if layout == "nhwc" else 1
    phys = (shape[0], *shape[2:], shape[1]) if layout == "nhwc" else shape
    x = rng.standard_normal(phys, dtype=np.float32)
    dy = rng.standard_normal(phys, dtype=np.float32)
    c = shape[1]
    g, b = np.ones(c, np.float32), np.zeros(c, np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)
    _, m, v = fastbn.batch_norm_train(x, g, b, axis=axis)
    s = x.nbytes / 1e6
    train = median_ms(lambda: fastbn.batch_norm_train(x, g, b, axis=axis, out=y))
    infer = median_ms(lambda: fastbn.batch_norm_infer(x, m, v, g, b, axis=axis, out=y))
    back = median_ms(lambda: fastbn.batch_norm_backward(dy, x, m, v, g, axis=axis, out=dx))
    frozen = median_ms(lambda: fastbn.batch_norm_backward(dy, x, m, v, g, axis=axis, out=dx, batch_stats=False))
    return (
        f"{'x'.join(map(str, shape)) + ' ' + layout:18s} train {train:.2f} ms ({2 * s / train / bw:.2f}) = "
        f"normalize {infer:.2f} + statistics {train - infer:.2f} ({s / (train - infer):.0f} GB/s read) | "
        f"backward {back:.2f} ms ({3 * s / back / bw:.2f}); one-pass frozen-statistics backward "
        f"{frozen:.2f} ms ({3 * s / frozen / bw:.2f})"
    )


if __name__ == "__main__":
    main()
