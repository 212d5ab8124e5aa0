"""The demo's figures, inspected as matplotlib objects (no pixels): legends, line styles, where the legends sit,
and accuracy in percent as the printed summary has it."""

from __future__ import annotations

import numpy as np
import pytest

from fastbn.demo.experiment import VARIANTS, Config, History, Sweep
from fastbn.demo.figures import convergence_figure, sweep_figure

pytest.importorskip("matplotlib", reason="the figures need the demo extra (matplotlib)")

CFG = Config(steps=3000, eval_every=100, sweep_steps=500, sweep_points=5)
STEPS = list(range(100, 3001, 100))


def history(acc_start, acc_end, band_start, band_end, rise=5.0):
    """A run whose accuracy and 15/50/85th percentiles move from their start to their end values, fast at first
    (rate ``rise``), as in a real run. The batch-norm band of a real run reaches its top early, in the top-left
    corner where panel (c)'s legend used to be."""
    t = 1 - np.exp(-rise * np.linspace(0, 1, len(STEPS)))
    t /= t[-1]
    acc = acc_start + (acc_end - acc_start) * t
    band = np.asarray(band_start) + np.outer(t, np.subtract(band_end, band_start))
    return History(
        steps=STEPS,
        train_loss=list(1 - acc),
        test_acc=list(acc),
        test_acc_batch=list(acc - 0.005),
        percentiles=[tuple(row) for row in band],
    )


@pytest.fixture(scope="module")
def runs():
    # The shapes of a real run (SGD, seed 0): the plain band widens downwards, the batch-norm band both ways.
    return {
        "plain": history(0.18, 0.936, (-3.4, -3.0, -2.9), (-5.1, -1.7, -0.1), rise=4.0),
        "batch norm": history(0.80, 0.937, (-2.5, -1.3, -0.2), (-3.1, -1.3, 1.1), rise=8.0),
    }


@pytest.fixture(scope="module")
def fig1(runs):
    fig = convergence_figure(runs, CFG)
    fig.draw_without_rendering()  # lays the figure out, so that legends and lines have their final places
    return fig


@pytest.fixture(scope="module")
def sweep():
    lrs = CFG.sweep_lrs()
    acc = {"plain": np.array([0.1, 0.1, 0.85, 0.93, 0.1]), "batch norm": np.array([0.89, 0.91, 0.93, 0.94, 0.92])}
    return Sweep(lrs, acc, {v: np.array([False, False, False, False, True]) for v in VARIANTS})


def legend_entries(ax):
    legend = ax.get_legend()
    assert legend is not None
    return [
        (text.get_text(), line.get_linestyle(), line.get_color())
        for text, line in zip(legend.texts, legend.get_lines())
    ]


def test_every_legend_entry_is_distinct(fig1, sweep):
    for ax in [*fig1.axes, *sweep_figure(sweep, CFG).axes]:
        entries = legend_entries(ax)
        labels = [label for label, _, _ in entries]
        styles = [(style, color) for _, style, color in entries]
        assert len(set(labels)) == len(labels), labels
        assert len(set(styles)) == len(styles), f"{ax.get_title()}: two entries look alike: {entries}"


@pytest.mark.parametrize("panel", [1, 2], ids=["b-plain", "c-batch-norm"])
def test_percentile_panels_have_one_style_per_percentile(fig1, panel):
    entries = legend_entries(fig1.axes[panel])
    assert [label for label, _, _ in entries] == ["15th percentile", "50th percentile", "85th percentile"]
    assert len({style for _, style, _ in entries}) == 3


@pytest.mark.parametrize("panel", [1, 2], ids=["b-plain", "c-batch-norm"])
def test_percentile_legend_covers_no_percentile_line(fig1, panel):
    ax = fig1.axes[panel]
    box = ax.get_legend().get_window_extent()
    lines = [line for line in ax.get_lines() if line.get_label().endswith("percentile")]
    assert len(lines) == 3
    for line in lines:
        path = line.get_transform().transform_path(line.get_path())  # display coordinates, like the box
        assert not path.intersects_bbox(box, filled=False), f"the legend covers the {line.get_label()} line"


def test_accuracy_is_in_percent(runs, fig1, sweep):
    ax = fig1.axes[0]
    assert "%" in ax.get_ylabel()
    assert ax.get_ylim()[1] == 100
    by_label = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    for name in VARIANTS:
        np.testing.assert_allclose(by_label[f"{name} (eval mode)"], 100 * np.array(runs[name].test_acc))
    np.testing.assert_allclose(
        by_label["batch norm (batch statistics)"], 100 * np.array(runs["batch norm"].test_acc_batch)
    )
    threshold = [line for line in ax.get_lines() if line.get_label().startswith("_")]  # the unlabeled 90% line
    assert [list(line.get_ydata()) for line in threshold] == [[90, 90]]

    ax = sweep_figure(sweep, CFG).axes[0]
    assert "%" in ax.get_ylabel() and ax.get_ylim() == (0, 100)
    by_label = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    for name in VARIANTS:
        (label,) = [k for k in by_label if k.startswith(f"{name} (reaches 90%")]
        np.testing.assert_allclose(by_label[label], 100 * sweep.final_acc[name])
    np.testing.assert_allclose(by_label["90% threshold"], [90, 90])
