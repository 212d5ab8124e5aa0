"""The two experiments: convergence (Ioffe & Szegedy 2015, Fig. 1) and a learning-rate sweep.

Both train the paper's network, 3 fully connected hidden layers of 100 sigmoid units and a softmax output, in
two variants that differ only in batch norm:

- plain:      Dense(+bias) -> sigmoid            (x3) -> Dense -> softmax
- batch norm: Dense(no bias) -> fastbn.BatchNorm -> sigmoid (x3) -> Dense -> softmax

The two variants start from the same weights and see the same mini-batches in the same order, so the only
difference between their curves is batch norm.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import fastbn

from .data import Digits
from .nn import OPTIMIZERS, BatchNormSigmoid, Dense, Sequential, Sigmoid, softmax_cross_entropy

__all__ = [
    "Config",
    "History",
    "Sweep",
    "VARIANTS",
    "DEFAULT_LR",
    "SWEEP_GRID",
    "build_network",
    "accuracy",
    "train",
    "run_convergence",
    "run_sweep",
    "steps_to_reach",
    "trainable_range",
]

VARIANTS = ("plain", "batch norm")

# Learning rate of the convergence run, per optimizer: close to the best rate for the PLAIN network in the
# default sweep, so that Fig. 1a compares batch norm against a baseline at its best, not a handicapped one.
DEFAULT_LR = {"sgd": 2.0, "momentum": 0.5, "rmsprop": 3e-3, "adam": 1e-2}

# Learning-rate sweep: (log10 of the smallest, log10 of the largest) rate, per optimizer: 3.5 decades that
# reach past where the plain network stops training on either side; points are spaced evenly in log space.
SWEEP_GRID = {"sgd": (-2.0, 1.5), "momentum": (-3.0, 0.5), "rmsprop": (-4.0, -0.5), "adam": (-4.0, -0.5)}


@dataclass
class Config:
    """Everything a run depends on; two runs with equal Configs (and data) give identical results."""

    optimizer: str = "sgd"
    lr: float | None = None  # None: DEFAULT_LR[optimizer]
    steps: int = 6000  # convergence run
    sweep_steps: int = 2000  # each run of the sweep
    sweep_points: int = 15
    batch_size: int = 60
    hidden: tuple[int, ...] = (100, 100, 100)
    init_std: float = 0.05
    eval_every: int = 100
    seed: int = 0
    probe_unit: int = 0  # which sigmoid of the last hidden layer Fig. 1b/c follows
    threshold: float = 0.90  # "trains": reaches this test accuracy
    # float32: the precision networks are trained in and the one fastbn's kernels are built around (half the bytes
    # of float64, and its statistics are accumulated accurately anyway); nothing in this experiment needs more.
    dtype: type = np.float32

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr

    def sweep_lrs(self) -> np.ndarray:
        lo, hi = SWEEP_GRID[self.optimizer]
        return np.logspace(lo, hi, self.sweep_points)


@dataclass
class History:
    """What one training run recorded at each evaluation (every ``eval_every`` steps, and at the end)."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)  # mean training loss since the previous evaluation
    test_acc: list[float] = field(default_factory=list)  # eval mode: BN uses its running averages
    test_acc_batch: list[float] = field(default_factory=list)  # BN with test mini-batch statistics instead
    percentiles: list[tuple[float, float, float]] = field(default_factory=list)  # 15/50/85th, probed sigmoid input
    diverged: bool = False

    @property
    def final_acc(self) -> float:
        return self.test_acc[-1] if self.test_acc else float("nan")


@dataclass
class Sweep:
    """The learning-rate sweep: the grid and, per variant, the final test accuracy and divergence at each rate."""

    lrs: np.ndarray
    final_acc: dict[str, np.ndarray]  # variant -> final test accuracy per learning rate
    diverged: dict[str, np.ndarray]


def build_network(batch_norm: bool, rng: np.random.Generator, cfg: Config, n_in: int, n_classes: int):
    """The paper's MLP. Returns ``(network, probe)`` where probe is the last hidden layer's sigmoid (its input is
    ``probe.last_input``). With batch norm, each batch-norm layer runs the sigmoid fused into its own passes."""
    layers = []
    width = n_in
    for h in cfg.hidden:
        layers.append(Dense(width, h, rng, cfg.init_std, bias=not batch_norm, dtype=cfg.dtype))
        probe = BatchNormSigmoid(h, dtype=cfg.dtype) if batch_norm else Sigmoid()
        layers.append(probe)
        width = h
    layers.append(Dense(width, n_classes, rng, cfg.init_std, dtype=cfg.dtype))
    return Sequential(layers), probe


def _batch_norms(net: Sequential) -> list[fastbn.BatchNorm]:
    return [layer for layer in net.layers if isinstance(layer, fastbn.BatchNorm)]


def accuracy(net: Sequential, x: np.ndarray, y: np.ndarray, batch_stats: bool = False, batch_size: int = 60) -> float:
    """Test accuracy. Eval mode (running averages) by default; ``batch_stats=True`` normalizes each test
    mini-batch of ``batch_size`` with its own statistics instead, leaving the running averages untouched."""
    if not batch_stats:
        net.eval()
        try:
            return float(np.mean(net(x).argmax(axis=1) == y))
        finally:
            net.train()
    bns = _batch_norms(net)
    saved = [bn.state_dict() for bn in bns]  # training-mode forwards update the running averages: restore them
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int(np.sum(net(x[i : i + batch_size]).argmax(axis=1) == y[i : i + batch_size]))
    for bn, state in zip(bns, saved):
        bn.load_state_dict(state)
    return correct / len(x)


def _probe_percentiles(net: Sequential, probe, x: np.ndarray, unit: int) -> tuple[float, float, float]:
    net.eval()
    net(x)
    net.train()
    return tuple(float(v) for v in np.percentile(probe.last_input[:, unit], [15, 50, 85]))


@contextmanager
def _one_blas_thread():
    """Run NumPy's BLAS on one thread. Products with a 60-row batch are far too small for threads to help, and
    when another process competes for the cores, BLAS threads wait on each other: on a 2-core machine with one
    busy process, 500 steps of the plain network took 6.2 s with OpenBLAS's 2 threads and 0.4 s with 1 (the
    same 0.3 s as on an idle machine). It also makes the results independent of the BLAS thread count.
    threadpoolctl comes with the demo extra; without it BLAS keeps its
    default."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _generators(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """One generator for the initial weights, one for the order of the mini-batches."""
    init, order = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(init), np.random.default_rng(order)


def train(
    batch_norm: bool,
    data: Digits,
    cfg: Config,
    lr: float,
    steps: int,
    eval_every: int | None = None,
    probe: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> History:
    """Train one variant for ``steps`` mini-batches with ``cfg.optimizer`` at ``lr``; evaluate every
    ``eval_every`` steps (None: only at the end). Stops early, marking the run diverged, if the loss overflows."""
    init_rng, order_rng = _generators(cfg.seed)
    n_classes = int(max(data.y_train.max(), data.y_test.max())) + 1
    net, probe_layer = build_network(batch_norm, init_rng, cfg, data.x_train.shape[1], n_classes)
    opt = OPTIMIZERS[cfg.optimizer](net.parameters(), lr)
    hist = History()
    n = len(data.x_train)
    bs = min(cfg.batch_size, n)
    order, pos = order_rng.permutation(n), 0
    loss_sum, loss_count = 0.0, 0

    def evaluate(step: int) -> None:
        nonlocal loss_sum, loss_count
        hist.steps.append(step)
        hist.train_loss.append(loss_sum / max(loss_count, 1))
        loss_sum, loss_count = 0.0, 0
        hist.test_acc.append(accuracy(net, data.x_test, data.y_test))
        if batch_norm:
            hist.test_acc_batch.append(accuracy(net, data.x_test, data.y_test, batch_stats=True, batch_size=bs))
        else:
            hist.test_acc_batch.append(hist.test_acc[-1])
        if probe:
            hist.percentiles.append(_probe_percentiles(net, probe_layer, data.x_test, cfg.probe_unit))

    # A diverging plain network overflows exp() in the sigmoid and softmax; that is an outcome, not an error.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"), _one_blas_thread():
        for step in range(1, steps + 1):
            if pos + bs > n:  # a new epoch: reshuffle
                order, pos = order_rng.permutation(n), 0
            idx = order[pos : pos + bs]
            pos += bs
            loss, dlogits = softmax_cross_entropy(net(data.x_train[idx]), data.y_train[idx])
            if not np.isfinite(loss):
                hist.diverged = True
                evaluate(step)
                break
            net.backward(dlogits)
            opt.step(net.gradients())
            loss_sum += loss
            loss_count += 1
            if on_step is not None:
                on_step(1)
            if (eval_every and step % eval_every == 0) or step == steps:
                evaluate(step)
    if hist.diverged and on_step is not None:
        on_step(steps - step + 1)  # the steps it will not take, so that a progress bar completes
    return hist


def run_convergence(data: Digits, cfg: Config, on_step=None) -> dict[str, History]:
    """Fig. 1: both variants at ``cfg.learning_rate`` for ``cfg.steps`` steps, evaluated every ``eval_every``."""
    return {
        name: train(name == "batch norm", data, cfg, cfg.learning_rate, cfg.steps, cfg.eval_every, True, on_step)
        for name in VARIANTS
    }


def run_sweep(data: Digits, cfg: Config, on_step=None) -> Sweep:
    """Final test accuracy of both variants after ``cfg.sweep_steps`` steps at each rate of ``cfg.sweep_lrs()``."""
    lrs = cfg.sweep_lrs()
    acc = {v: np.zeros(len(lrs)) for v in VARIANTS}
    div = {v: np.zeros(len(lrs), bool) for v in VARIANTS}
    for i, lr in enumerate(lrs):
        for v in VARIANTS:
            h = train(v == "batch norm", data, cfg, float(lr), cfg.sweep_steps, None, False, on_step)
            acc[v][i], div[v][i] = h.final_acc, h.diverged
    return Sweep(lrs, acc, div)


def steps_to_reach(hist: History, threshold: float) -> int | None:
    """First evaluated step at which the test accuracy reached ``threshold``; None if it never did."""
    for step, a in zip(hist.steps, hist.test_acc):
        if a >= threshold:
            return step
    return None


def trainable_range(lrs: Sequence[float], acc: Sequence[float], threshold: float) -> tuple[float, float] | None:
    """The widest run of consecutive grid rates whose final accuracy reaches ``threshold``: (lowest, highest)."""
    best, start = None, None
    for i, a in enumerate(list(acc) + [-1.0]):
        if a >= threshold and start is None:
            start = i
        elif a < threshold and start is not None:
            if best is None or i - 1 - start > best[1] - best[0]:
                best = (start, i - 1)
            start = None
    return None if best is None else (float(lrs[best[0]]), float(lrs[best[1]]))
