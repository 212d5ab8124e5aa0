"""How often the one-time cache probe gives each answer, each trial in a fresh process, with the machine quiet and
with another process copying memory on another core.

The first call whose streaming decision depends on it asks whether the last-level cache keeps 16 MiB that a core
has just written (cpu/dispatch.cpp, probe_cache_keeps); the process keeps the answer, and the answer sets the size
from which outputs stream (4 MiB where the cache does not keep them, else half the reported cache). A VM's share of
a big L3 may not keep them, and another process's memory traffic slows some of the probe's reads: this counts the
answers and times the probe. Modes run interleaved, trial by trial.

    python benchmarks/cache_probe.py [--trials 40] [--modes quiet,busy,bursty]

busy: another process copies 64 MB over and over; bursty: the same with a 3 ms pause after each copy.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from fastbn.bench import comma_list, int_at_least

CHILD = """
import time, fastbn
t0 = time.perf_counter()
keeps = fastbn._core.cache_keeps_writes()
print(int(keeps), (time.perf_counter() - t0) * 1e3, fastbn._core.stream_min_bytes())
"""

HOG = """
import sys, time
import numpy as np
a = np.ones(16 << 20, np.float32)
b = np.empty_like(a)
pause = float(sys.argv[1])
print("ready", flush=True)
while True:
    np.copyto(b, a)
    if pause:
        time.sleep(pause)
"""

PAUSES = {"busy": 0.0, "bursty": 0.003}
MODES = ("quiet", *PAUSES)


def trial(mode: str) -> tuple[int, float, int]:
    hog = None
    if mode != "quiet":
        hog = subprocess.Popen(
            [sys.executable, "-c", HOG, str(PAUSES[mode])], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        hog.stdout.readline()  # its arrays are in memory: copying has begun
        time.sleep(0.1)
    try:
        out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout.split()
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return int(out[0]), float(out[1]), int(out[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int_at_least(1), default=40, help="fresh processes per mode (default 40)")
    ap.add_argument("--modes", type=comma_list(MODES), default=list(MODES), help="comma-separated: quiet, busy, bursty")
    args = ap.parse_args()
    modes = args.modes
    results: dict[str, list[tuple[int, float, int]]] = {m: [] for m in modes}
    for _ in range(args.trials):
        for m in modes:
            results[m].append(trial(m))
    print(f"{'mode':<8} {'keeps':>6} {'does not':>9} {'probe ms median':>16} {'max':>7}  stream from (MiB)")
    for m in modes:
        rs = results[m]
        keeps = sum(k for k, _, _ in rs)
        ms = [t for _, t, _ in rs]
        sizes = sorted({s >> 20 for _, _, s in rs})
        print(f"{m:<8} {keeps:>6} {len(rs) - keeps:>9} {statistics.median(ms):>16.1f} {max(ms):>7.1f}  {sizes}")


if __name__ == "__main__":
    main()
