"""The CUDA path against the CPU path and PyTorch CUDA. Needs a usable GPU: skipped, with the reason, elsewhere
(scripts/gpu-check.sh runs these on a GPU machine)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import fastbn

from conftest import ref_backward, ref_stats, ref_train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not fastbn.cuda.is_available(),
        reason="no usable CUDA device (or fastbn built without CUDA): "
        f"build_info()['cuda']={fastbn.build_info()['cuda']}",
    ),
]

# (shape, axis, layout): layout "nhwc" builds channels-last memory.
CASES = [
    ((32, 16, 9, 9), 1, "nchw"),
    ((16, 24, 7, 7), 1, "nhwc"),
    ((6, 5, 4, 7), -1, "c"),
    ((300, 70), 1, "c"),
    ((4, 3, 5), 1, "c"),
    ((2, 3, 4, 5, 6), 1, "c"),
    ((64, 256, 14, 14), 1, "nchw"),
    ((8192, 96), 1, "c"),
    ((16, 64, 28, 28), 1, "nhwc"),
    # clusters of 8-16 blocks on the resident path (compute capability 9.0+): 800 KB channels, 2-D tiles
    ((16, 4, 112, 112), 1, "nchw"),
    ((8192, 200), 1, "c"),
]


def host_input(rng, shape, layout, dtype):
    if layout == "nhwc":
        n, c, *sp = shape
        return (rng.standard_normal((n, *sp, c)) * 2 + 0.5).astype(dtype).transpose(0, 3, 1, 2)
    return (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)


EPS = 1e-2  # large enough that an eps dropped anywhere shows in float32 too


def tol(dtype):
    return (3e-5, 3e-5) if dtype == np.float32 else (1e-10, 1e-10)


# ------------------------------------------------------------------------------------------------------------
# fastbn's own DeviceArray: no CuPy or PyTorch needed


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis,layout", CASES)
def test_device_array_passes_match_the_float64_reference(shape, axis, layout, dtype):
    rng = np.random.default_rng(0)
    x = host_input(rng, shape, layout, dtype)
    c = x.shape[axis]
    gamma = (rng.random(c) + 0.5).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    xd = fastbn.cuda.to_device(np.ascontiguousarray(x))
    y, mean, var = fastbn.batch_norm_train(
        xd, fastbn.cuda.to_device(gamma), fastbn.cuda.to_device(beta), axis=axis, eps=EPS
    )
    assert isinstance(y, fastbn.cuda.DeviceArray)
    y_ref, m_ref, v_ref = ref_train(x, gamma, beta, axis=axis, eps=EPS)
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(y.get(), y_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(mean.get(), m_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(var.get(), v_ref, rtol=rtol, atol=atol)
    for batch_stats in (True, False):
        dx, dg, db = fastbn.batch_norm_backward(
            fastbn.cuda.to_device(dy),
            xd,
            mean,
            var,
            fastbn.cuda.to_device(gamma),
            axis=axis,
            eps=EPS,
            batch_stats=batch_stats,
        )
        dx_ref, dg_ref, db_ref = ref_backward(
            dy, x, mean.get(), var.get(), gamma, axis=axis, eps=EPS, batch_stats=batch_stats
        )
        n = x.size // c
        np.testing.assert_allclose(dx.get(), dx_ref, rtol=10 * rtol, atol=10 * atol)
        np.testing.assert_allclose(dg.get(), dg_ref, rtol=rtol, atol=atol * np.sqrt(n))
        np.testing.assert_allclose(db.get(), db_ref, rtol=rtol, atol=atol * np.sqrt(n))
    yi = fastbn.batch_norm_infer(
        xd, mean, var, fastbn.cuda.to_device(gamma), fastbn.cuda.to_device(beta), axis=axis, eps=EPS
    )
    np.testing.assert_allclose(yi.get(), y_ref, rtol=rtol, atol=atol)


def test_large_mean_on_the_gpu():
    x = (np.random.default_rng(1).standard_normal((64, 8, 32, 32)) + 1e4).astype(np.float32)
    y, mean, var = fastbn.batch_norm_train(fastbn.cuda.to_device(x))
    y_ref, m_ref, v_ref = ref_train(x)
    np.testing.assert_allclose(var.get(), v_ref, rtol=1e-3)
    np.testing.assert_allclose(y.get(), y_ref, atol=1e-3)


def test_constant_channel_on_the_gpu():
    x = np.full((16, 3, 10, 10), 0.1, np.float32)
    beta = np.array([1.0, 2.0, 3.0], np.float32)
    y, _, var = fastbn.batch_norm_train(fastbn.cuda.to_device(x), None, fastbn.cuda.to_device(beta))
    np.testing.assert_array_equal(y.get(), np.broadcast_to(beta.reshape(1, 3, 1, 1), x.shape))
    np.testing.assert_array_equal(var.get(), 0)


def test_gpu_results_are_deterministic():
    x = fastbn.cuda.to_device(np.random.default_rng(2).standard_normal((128, 32, 16, 16)).astype(np.float32))
    a = [r.get() for r in fastbn.batch_norm_train(x)]
    b = [r.get() for r in fastbn.batch_norm_train(x)]
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_cuda_module_matches_the_cpu_module(momentum):
    rng = np.random.default_rng(3)
    cpu = fastbn.BatchNorm(6, momentum=momentum, dtype=np.float64)
    gpu = fastbn.BatchNorm(6, momentum=momentum, dtype=np.float64, device="cuda")
    assert isinstance(gpu.gamma, fastbn.cuda.DeviceArray)
    for step in range(4):
        x = rng.standard_normal((10, 6, 5)) * (step + 1) + step
        dy = rng.standard_normal(x.shape)
        y_cpu = cpu(x)
        y_gpu = gpu(fastbn.cuda.to_device(x))
        np.testing.assert_allclose(y_gpu.get(), y_cpu, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(
            gpu.backward(fastbn.cuda.to_device(dy)).get(), cpu.backward(dy), rtol=1e-9, atol=1e-9
        )
        np.testing.assert_allclose(gpu.grad_gamma.get(), cpu.grad_gamma, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(gpu.grad_beta.get(), cpu.grad_beta, rtol=1e-9, atol=1e-9)
    for k, v in cpu.state_dict().items():
        np.testing.assert_allclose(gpu.state_dict()[k], v, rtol=1e-12, atol=1e-12)
    cpu.eval()
    gpu.eval()
    x = rng.standard_normal((7, 6, 5))
    np.testing.assert_allclose(gpu(fastbn.cuda.to_device(x)).get(), cpu(x), rtol=1e-10, atol=1e-10)
    gpu.to("cpu")
    assert isinstance(gpu.gamma, np.ndarray)
    np.testing.assert_allclose(gpu(x), cpu(x), rtol=1e-10, atol=1e-10)


def test_host_input_to_a_cuda_module_is_refused():
    bn = fastbn.BatchNorm(3, device="cuda")
    with pytest.raises(TypeError, match="lives on the GPU"):
        bn(np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match="host array but the other arrays are on the GPU"):
        fastbn.batch_norm_train(fastbn.cuda.to_device(np.ones((4, 3), np.float32)), np.ones(3, np.float32))


# ------------------------------------------------------------------------------------------------------------
# PyTorch CUDA tensors in, PyTorch CUDA tensors out; compared with torch's own (cuDNN) batch norm


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_tensors_match_torch_batch_norm(dtype, channels_last):
    torch = pytest.importorskip("torch")
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    x = torch.randn(16, 32, 12, 12, dtype=tdt, device="cuda") * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.rand(32, dtype=tdt, device="cuda") + 0.5
    b = torch.randn(32, dtype=tdt, device="cuda")
    xr = x.clone().requires_grad_(True)
    wr, br = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    yt = torch.nn.functional.batch_norm(xr, None, None, wr, br, training=True, eps=1e-5)
    gy = torch.randn_like(yt)
    yt.backward(gy)
    y, mean, var = fastbn.batch_norm_train(x, w, b)
    assert isinstance(y, torch.Tensor) and y.is_cuda and y.dtype == tdt
    assert y.stride() == x.stride()  # same memory layout as the input
    rtol, atol = tol(dtype)
    torch.testing.assert_close(y, yt.detach(), rtol=rtol * 10, atol=atol * 10)
    dx, dg, db = fastbn.batch_norm_backward(gy, x, mean, var, w)
    torch.testing.assert_close(dx, xr.grad, rtol=rtol * 30, atol=atol * 30)
    torch.testing.assert_close(dg, wr.grad, rtol=rtol * 30, atol=atol * 300)
    torch.testing.assert_close(db, br.grad, rtol=rtol * 30, atol=atol * 300)
    yi = fastbn.batch_norm_infer(x, mean, var, w, b)
    assert yi.stride() == x.stride()
    want = torch.nn.functional.batch_norm(x, mean, var, w, b, training=False, eps=1e-5)
    torch.testing.assert_close(yi, want, rtol=rtol * 10, atol=atol * 10)
    # out= given: written in place and returned; an out of another layout is refused and left alone.
    y2 = torch.full_like(x, float("nan"))
    r, _, _ = fastbn.batch_norm_train(x, w, b, out=y2)
    assert r is y2
    torch.testing.assert_close(y2, y, rtol=0, atol=0)
    other = torch.full(x.shape, 7.0, dtype=tdt, device="cuda").contiguous(
        memory_format=torch.contiguous_format if channels_last else torch.channels_last
    )
    with pytest.raises(ValueError, match="same memory layout"):
        fastbn.batch_norm_infer(x, mean, var, w, b, out=other)
    assert bool((other == 7.0).all())
    # A strided view (every other channel) takes the general path: one dense copy, the same values.
    xs, ws, bs = x[:, ::2], w[::2].contiguous(), b[::2].contiguous()
    ys, ms, vs = fastbn.batch_norm_train(xs, ws, bs)
    want = torch.nn.functional.batch_norm(xs, None, None, ws, bs, training=True, eps=1e-5)
    torch.testing.assert_close(ys, want, rtol=rtol * 10, atol=atol * 10)


def test_torch_module_parity_on_the_gpu():
    torch = pytest.importorskip("torch")
    theirs = torch.nn.BatchNorm2d(8).cuda()
    ours = fastbn.BatchNorm(8, device="cuda")
    for _ in range(3):
        x = torch.randn(4, 8, 6, 6, device="cuda") * 2 + 1
        torch.testing.assert_close(ours(x), theirs(x).detach(), rtol=1e-4, atol=1e-4)
    for k, v in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[k], v.cpu().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fastbn_torch_modules_on_the_gpu_match_torch_in_float64(channels_last):
    """fastbn.torch.convert on a CUDA model: several training steps (running statistics, gradients of x and the
    parameters) and an eval forward, against the stock model in float64 on the same GPU."""
    torch = pytest.importorskip("torch")
    import fastbn.torch as fbt

    torch.manual_seed(0)
    stock = (
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1, bias=False),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 8, 3, padding=1, bias=False),
            torch.nn.BatchNorm2d(8, momentum=None),
        )
        .double()
        .cuda()
    )
    ours = fbt.convert(copy.deepcopy(stock))
    assert isinstance(ours[1], fbt.BatchNorm2d) and ours[1].weight.is_cuda
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for _ in range(3):
        x = (torch.randn(8, 3, 20, 20, dtype=torch.float64, device="cuda") * 2 + 1).contiguous(memory_format=fmt)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yb = stock(xa), ours(xb)
        torch.testing.assert_close(yb, ya, rtol=1e-9, atol=1e-9)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-9, atol=1e-9)
        for (name, pa), pb in zip(stock.named_parameters(), ours.parameters()):
            torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-9, atol=1e-9, msg=name)
    for k, v in stock.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=1e-12, atol=1e-12, msg=k)
    stock.eval()
    ours.eval()
    x = torch.randn(4, 3, 20, 20, dtype=torch.float64, device="cuda").contiguous(memory_format=fmt)
    torch.testing.assert_close(ours(x), stock(x), rtol=1e-9, atol=1e-9)


def test_operators_on_cuda_tensors_pass_opcheck():
    """torch.library.opcheck (schema, fake kernel, autograd registration) with CUDA tensors."""
    torch = pytest.importorskip("torch")
    import fastbn.torch  # noqa: F401  (registers the operators)

    gen = torch.Generator(device="cuda").manual_seed(4)
    d, dev = torch.float64, "cuda"
    x = torch.randn(4, 3, 5, 5, dtype=d, device=dev, generator=gen, requires_grad=True)
    w = torch.rand(3, dtype=d, device=dev, generator=gen, requires_grad=True)
    b = torch.rand(3, dtype=d, device=dev, generator=gen, requires_grad=True)
    m = torch.randn(3, dtype=d, device=dev, generator=gen)
    v = torch.rand(3, dtype=d, device=dev, generator=gen) + 0.5
    ops = torch.ops.fastbn
    xd, wd, bd = x.detach(), w.detach(), b.detach()
    cases = [
        (ops.batch_norm_train, (x, w, b, None, 1e-5, 0, 0.01)),
        (ops.batch_norm_train, (x.detach().to(memory_format=torch.channels_last).requires_grad_(), w, b, None,
                                1e-5, 0, 0.01)),
        (ops.batch_norm_infer, (x, m, v, w, b, None, 1e-5, 0, 0.01)),
        (ops.batch_norm_backward, (torch.randn_like(xd), xd, None, m, v, wd, bd, 1e-5, True, 0, 0.01, False)),
        (ops.batch_norm_backward, (torch.randn_like(xd), xd, None, m, v, wd, bd, 1e-5, False, 0, 0.01, False)),
    ]  # fmt: skip
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_operators_refuse_what_the_cuda_kernels_do_not_take():
    """Called directly, the operators raise instead of reading a bfloat16 storage as float32 or dropping an
    epilogue (fastbn.torch.batch_norm sends those calls to PyTorch's batch norm)."""
    torch = pytest.importorskip("torch")
    import fastbn.torch as fbt

    ops = torch.ops.fastbn
    x = torch.randn(4, 3, 5, 5, device="cuda")
    m, v = torch.zeros(3, device="cuda"), torch.ones(3, device="cuda")
    with pytest.raises(TypeError, match="float32 or float64, got torch.bfloat16"):
        ops.batch_norm_train(x.bfloat16(), None, None, None, 1e-5, 0, 0.01)
    with pytest.raises(NotImplementedError, match="CPU tensors only"):
        ops.batch_norm_train(x, None, None, None, 1e-5, 1, 0.01)
    with pytest.raises(NotImplementedError, match="CPU tensors only"):
        ops.batch_norm_infer(x, m, v, None, None, x, 1e-5, 0, 0.01)
    # The functional API takes both, through PyTorch's batch norm.
    y = fbt.batch_norm(x.bfloat16(), None, None, training=True)
    want = torch.nn.functional.batch_norm(x.bfloat16(), None, None, training=True)
    torch.testing.assert_close(y, want)
    y = fbt.batch_norm(x, m, v, activation="relu", residual=x)
    want = torch.relu(torch.nn.functional.batch_norm(x, m, v) + x)
    torch.testing.assert_close(y, want)


def test_torch_compile_fullgraph_on_the_gpu_matches_eager_stock():
    """A converted conv -> batch norm -> ReLU net on the GPU under torch.compile(fullgraph=True): two training
    steps (loss, gradients, running statistics) against the stock model in eager mode."""
    torch = pytest.importorskip("torch")
    import fastbn.torch as fbt

    def net():
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(inplace=True),
            torch.nn.Conv2d(8, 4, 3, padding=1, bias=False),
            torch.nn.BatchNorm2d(4),
        ).cuda()

    torch.manual_seed(0)
    stock = net()
    ours = fbt.convert(net())
    ours.load_state_dict(stock.state_dict())
    compiled = torch.compile(ours, fullgraph=True)
    x = torch.randn(4, 3, 8, 8, device="cuda")
    for _ in range(2):
        la, lb = compiled(x).square().sum(), stock(x).square().sum()
        la.backward()
        lb.backward()
        torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours[0].weight.grad, stock[0].weight.grad, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(ours[1].running_var, stock[1].running_var, rtol=1e-5, atol=1e-6)
    assert int(ours[4].num_batches_tracked) == 2


# ------------------------------------------------------------------------------------------------------------
# CuPy arrays in, CuPy arrays out


def test_cupy_arrays_round_trip():
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((20, 7, 9)).astype(np.float32)
    y, mean, var = fastbn.batch_norm_train(cupy.asarray(x))
    assert isinstance(y, cupy.ndarray)
    y_ref, m_ref, v_ref = ref_train(x)
    np.testing.assert_allclose(cupy.asnumpy(y), y_ref, rtol=3e-5, atol=3e-5)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx, _, _ = fastbn.batch_norm_backward(cupy.asarray(dy), cupy.asarray(x), mean, var)
    m, v = ref_stats(x)
    np.testing.assert_allclose(cupy.asnumpy(dx), ref_backward(dy, x, m, v)[0], rtol=3e-4, atol=3e-4)
    wrapped = cupy.asarray(fastbn.cuda.to_device(x))  # zero-copy through __cuda_array_interface__
    np.testing.assert_array_equal(cupy.asnumpy(wrapped), x)


def test_resident_and_staged_paths_agree(tmp_path):
    """Hopper GPUs take the one-launch resident path where a channel fits a cluster's shared memory; the staged
    path (FASTBN_CUDA_RESIDENT=0, in a child process since the switch is read once) must give the same values."""
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(4)
    shapes = [(16, 4, 112, 112), (32, 64, 8, 8), (4096, 96)]
    inputs = {f"x{k}": (rng.standard_normal(s) * 3 + 1).astype(np.float32) for k, s in enumerate(shapes)}
    inputs.update({f"dy{k}": rng.standard_normal(s).astype(np.float32) for k, s in enumerate(shapes)})
    np.savez(tmp_path / "in.npz", **inputs)
    script = """
import sys, numpy as np, fastbn
d = np.load(sys.argv[1]); out = {}
for k in range(3):
    x = fastbn.cuda.to_device(d[f"x{k}"]); dy = fastbn.cuda.to_device(d[f"dy{k}"])
    y, m, v = fastbn.batch_norm_train(x)
    dx, dg, db = fastbn.batch_norm_backward(dy, x, m, v)
    for name, a in zip(("y", "m", "v", "dx", "dg", "db"), (y, m, v, dx, dg, db)):
        out[f"{name}{k}"] = a.get()
np.savez(sys.argv[2], **out)
"""
    results = []
    for flag in ("1", "0"):
        path = tmp_path / f"out{flag}.npz"
        env = dict(os.environ, FASTBN_CUDA_RESIDENT=flag)
        subprocess.run([sys.executable, "-c", script, str(tmp_path / "in.npz"), str(path)], env=env, check=True)
        results.append(np.load(path))
    resident, staged = results
    for key in resident.files:
        n = inputs["x0"].size  # the largest count per channel bounds the sums' rounding
        atol = 1e-4 * np.sqrt(n) if key[:2] in ("dg", "db") else 3e-5
        np.testing.assert_allclose(resident[key], staged[key], rtol=3e-5, atol=atol, err_msg=key)


def test_gpu_bench_times_every_layout_of_every_rank(tmp_path):
    # `bench --device cuda` once stopped at a 3-D shape's channels-last case (torch's channels_last takes rank 4
    # only); every (shape, layout, pass) must come back timed, with channels last in C-innermost memory.
    import json
    import subprocess
    import sys

    path = tmp_path / "gpu.json"
    run = subprocess.run(
        [sys.executable, "-m", "fastbn", "bench", "--device", "cuda", "--shapes", "4x8x64,2x8x6x6,64x16",
         "--dtypes", "float32", "--repeat", "3", "--json", str(path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    got = {(r["shape"], r["layout"], r["pass_"]) for r in json.loads(path.read_text())["results"]}
    want = {
        (s, lay, p)
        for s, lays in (("4x8x64", ("nchw", "nhwc")), ("2x8x6x6", ("nchw", "nhwc")), ("64x16", ("nc",)))
        for lay in lays
        for p in ("train", "infer", "backward")
    }
    assert got == want
    results = json.loads(path.read_text())["results"]
    assert all(r["fastbn_ms"] > 0 and r["torch_ms"] > 0 for r in results)
