"""The demo's figures, drawn with matplotlib's object API and its Agg renderer (no pyplot, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .experiment import VARIANTS, Config, History, Sweep, trainable_range

__all__ = [
    "COLORS",
    "PERCENTILE_STYLES",
    "convergence_figure",
    "sweep_figure",
    "plot_convergence",
    "plot_sweep",
    "write_figures",
]

COLORS = {"plain": "#d62728", "batch norm": "#1f77b4"}
# Line style per percentile of panels (b) and (c): three styles, so each has its own legend entry.
PERCENTILE_STYLES = {15: "--", 50: "-", 85: ":"}
# Empty room above the percentile curves, as a fraction of their range, for the one-row legend to sit in.
LEGEND_ROOM = 0.15


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # imported here: matplotlib is an optional extra

    return Figure(figsize=(width, height), layout="constrained")


def _percent(fractions) -> np.ndarray:
    """Accuracies are fractions in the experiments and percentages in the printed summary; the figures say %."""
    return 100 * np.asarray(fractions, dtype=float)


def convergence_figure(runs: dict[str, History], cfg: Config):
    """Fig. 1 of the paper as a matplotlib Figure: (a) test accuracy (%) against training step for both
    variants; (b), (c) the 15th, 50th and 85th percentiles of the input of one last-hidden-layer sigmoid over
    the test set, without and with BN."""
    fig = _figure(15, 4.4)
    axes = fig.subplots(1, 3)
    ax = axes[0]
    for name in VARIANTS:
        h = runs[name]
        ax.plot(h.steps, _percent(h.test_acc), color=COLORS[name], lw=1.8, label=f"{name} (eval mode)")
    bn = runs["batch norm"]
    ax.plot(
        bn.steps,
        _percent(bn.test_acc_batch),
        color=COLORS["batch norm"],
        lw=1,
        ls=":",
        label="batch norm (batch statistics)",
    )
    ax.axhline(100 * cfg.threshold, color="0.6", lw=0.8, ls="--")
    ax.set_ylim(max(0.0, min(_percent(runs[n].test_acc).min() for n in VARIANTS) - 2), 100)
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"(a) test accuracy, {cfg.optimizer} lr={cfg.learning_rate:g}")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)

    lows, highs = [], []
    for ax, name, letter in ((axes[1], "plain", "b"), (axes[2], "batch norm", "c")):
        h = runs[name]
        p = np.asarray(h.percentiles)
        ax.fill_between(h.steps, p[:, 0], p[:, 2], color=COLORS[name], alpha=0.2, lw=0)
        for k, (q, ls) in enumerate(PERCENTILE_STYLES.items()):
            ax.plot(h.steps, p[:, k], color=COLORS[name], ls=ls, lw=1.5, label=f"{q}th percentile")
        lows.append(p.min())
        highs.append(p.max())
        ax.set_xlabel("training step")
        ax.set_title(f"({letter}) {name}: input of sigmoid #{cfg.probe_unit}, last hidden layer")
        # One row above the curves (see LEGEND_ROOM), where it covers none of them, whatever their course.
        ax.legend(loc="upper center", ncol=3, fontsize=8)
        ax.grid(alpha=0.3)
    axes[1].set_ylabel("sigmoid input (test set)")
    span = max(highs) - min(lows)
    for ax in axes[1:]:  # one scale for (b) and (c), so their drift can be compared by eye
        ax.set_ylim(min(lows) - 0.05 * span, max(highs) + (0.05 + LEGEND_ROOM) * span)
    return fig


def plot_convergence(runs: dict[str, History], cfg: Config, path: Path) -> Path:
    """Write :func:`convergence_figure` to ``path`` (PNG)."""
    convergence_figure(runs, cfg).savefig(path, dpi=110)
    return path


def sweep_figure(sweep: Sweep, cfg: Config):
    """Final test accuracy (%) against learning rate for both variants, as a matplotlib Figure. The bars at the
    bottom mark the widest run of rates reaching ``cfg.threshold`` (each grid point standing for its cell of the
    log grid); crosses mark runs whose loss overflowed."""
    fig = _figure(7.5, 4.6)
    ax = fig.subplots()
    half_cell = np.sqrt(sweep.lrs[1] / sweep.lrs[0]) if len(sweep.lrs) > 1 else 1.5
    diverged_label = "diverged"
    for k, name in enumerate(VARIANTS):
        div = sweep.diverged[name]
        rng = trainable_range(sweep.lrs, sweep.final_acc[name], cfg.threshold)
        acc = _percent(sweep.final_acc[name])
        span = "none" if rng is None else f"{rng[0]:.3g} to {rng[1]:.3g}"
        label = f"{name} (reaches {cfg.threshold:.0%}: {span})"
        ax.plot(sweep.lrs, acc, "o-", color=COLORS[name], lw=1.8, ms=5, label=label)
        if div.any():
            ax.plot(sweep.lrs[div], acc[div], "x", color="k", ms=8, mew=1.5, label=diverged_label)
            diverged_label = None
        if rng is not None:
            ax.hlines(2.5 + 3.5 * k, rng[0] / half_cell, rng[1] * half_cell, color=COLORS[name], lw=6, alpha=0.8)
    ax.axhline(100 * cfg.threshold, color="0.6", lw=0.8, ls="--", label=f"{cfg.threshold:.0%} threshold")
    ax.axvline(cfg.learning_rate, color="0.3", lw=0.8, ls=":", label=f"lr of Fig. 1 ({cfg.learning_rate:g})")
    ax.set_xscale("log")
    ax.set_ylim(0, 100)
    ax.set_xlabel(f"learning rate ({cfg.optimizer})")
    ax.set_ylabel(f"test accuracy after {cfg.sweep_steps} steps (%)")
    ax.set_title(f"learning-rate robustness (bars: rates reaching {cfg.threshold:.0%})")
    ax.legend(loc="center left", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def plot_sweep(sweep: Sweep, cfg: Config, path: Path) -> Path:
    """Write :func:`sweep_figure` to ``path`` (PNG)."""
    sweep_figure(sweep, cfg).savefig(path, dpi=110)
    return path


def write_figures(runs: dict[str, History], sweep: Sweep, cfg: Config, out_dir) -> list[Path]:
    """Write fig1_convergence.png and lr_sweep.png into ``out_dir`` (created if needed); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        plot_convergence(runs, cfg, out / "fig1_convergence.png"),
        plot_sweep(sweep, cfg, out / "lr_sweep.png"),
    ]
