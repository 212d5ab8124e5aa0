"""fastbn.torch: drop-in modules, functional API, custom operators, torch.compile/export and conversion, against
PyTorch's own batch norm (float64 autograd where gradients are compared)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastbn.torch as ft

DIMS = {1: (ft.BatchNorm1d, torch.nn.BatchNorm1d), 2: (ft.BatchNorm2d, torch.nn.BatchNorm2d),
        3: (ft.BatchNorm3d, torch.nn.BatchNorm3d)}  # fmt: skip
SHAPES = {1: [(16, 6), (8, 6, 10)], 2: [(4, 6, 5, 7)], 3: [(2, 6, 3, 4, 5)]}


def pair(dim, dtype, **kw):
    fast_cls, torch_cls = DIMS[dim]
    torch.manual_seed(3)
    ref = torch_cls(6, dtype=dtype, **kw)
    if ref.affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
    ours = fast_cls(6, dtype=dtype, **kw)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def tol(dtype):
    return (1e-5, 1e-5) if dtype == torch.float32 else (1e-11, 1e-11)


CASES = [
    (d, s, cl) for d, shapes in SHAPES.items() for s in shapes for cl in ([False, True] if len(s) >= 4 else [False])
]
KWARGS = [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}]


@pytest.mark.parametrize("dim,shape,channels_last", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kw", KWARGS, ids=["default", "cma", "noaffine", "notrack"])
def test_modules_match_torch_over_train_and_eval_steps(dim, shape, dtype, kw, channels_last):
    ours, ref = pair(dim, dtype, **kw)
    rtol, atol = tol(dtype)
    gen = torch.Generator().manual_seed(5)
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(len(shape))
    for step in range(4):
        x = torch.randn(shape, dtype=dtype, generator=gen) * (step + 1) + step
        if channels_last:
            x = x.contiguous(memory_format=fmt)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), ref(xb)
        torch.testing.assert_close(ya, yb, rtol=rtol, atol=atol)
        if channels_last:
            assert ya.is_contiguous(memory_format=fmt)
        dy = torch.randn(shape, dtype=dtype, generator=gen)
        ya.backward(dy)
        yb.backward(dy)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=rtol * 10, atol=atol * 10)
        if ref.affine:
            torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=rtol * 10, atol=atol * 100)
            torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=rtol * 10, atol=atol * 100)
        for name, b in ref.named_buffers():
            torch.testing.assert_close(getattr(ours, name), b, rtol=rtol, atol=atol)
        if step == 1:
            ours.eval()
            ref.eval()
    assert ours.state_dict().keys() == ref.state_dict().keys()


class _Scaled(torch.nn.Module):
    def forward(self, w):
        return 2.0 * w + 0.25


@pytest.mark.parametrize("training", [True, False])
def test_parametrized_weights_and_functional_call_act_like_torch(training):
    # The modules read their parameters and buffers from nn.Module's tables; a parametrization (which replaces
    # the parameter by a property) and torch.func.functional_call (which swaps the tensors in) must still count.
    ours, ref = pair(2, torch.float64)
    for m in (ours, ref):
        torch.nn.utils.parametrize.register_parametrization(m, "weight", _Scaled())
        m.train(training)
    x = torch.randn(4, 6, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-11, atol=1e-11)
    ya.sum().backward()
    yb.sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-10)
    original = ref.parametrizations.weight.original
    torch.testing.assert_close(ours.parametrizations.weight.original.grad, original.grad, rtol=1e-10, atol=1e-10)
    swap = {
        "bias": torch.full((6,), 3.0, dtype=torch.float64),
        "running_mean": torch.full((6,), 0.5, dtype=torch.float64),
    }
    za = torch.func.functional_call(ours, swap, (x,))
    zb = torch.func.functional_call(ref, swap, (x,))
    torch.testing.assert_close(za, zb, rtol=1e-11, atol=1e-11)
    for name, b in ref.named_buffers():
        torch.testing.assert_close(dict(ours.named_buffers())[name], b, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_a_training_step_bumps_the_version_of_every_buffer_it_changes(momentum):
    # The running statistics and num_batches_tracked are changed in place by the kernel call itself; autograd
    # must still see it: a graph that saved one of them raises instead of silently using the new values. (torch
    # bumps num_batches_tracked's version, not the running statistics'.)
    ours, ref = pair(2, torch.float32, momentum=momentum)
    x = torch.randn(4, 6, 5, 7)
    before = {name: b._version for name, b in ours.named_buffers()}
    tracked = ref.num_batches_tracked._version
    ours.train()(x.clone().requires_grad_())
    ref.train()(x.clone().requires_grad_())
    assert {name: b._version > before[name] for name, b in ours.named_buffers()} == dict.fromkeys(before, True)
    assert ref.num_batches_tracked._version > tracked
    for name in ("running_mean", "num_batches_tracked"):
        saved = torch.ones((), requires_grad=True) * getattr(ours, name)
        ours(x)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            saved.sum().backward()


def test_functional_matches_torch_including_running_stat_updates():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, 6, dtype=torch.float64, generator=gen)
    w, b = torch.rand(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    rm1, rv1, rm2, rv2 = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64), None, None
    rm2, rv2 = rm1.clone(), rv1.clone()
    for training, momentum in ((True, 0.1), (True, 0.3), (False, 0.1)):
        ya = ft.batch_norm(x, rm1, rv1, w, b, training, momentum, 1e-3)
        yb = torch.nn.functional.batch_norm(x, rm2, rv2, w, b, training, momentum, 1e-3)
        torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rm1, rm2, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rv1, rv2, rtol=1e-12, atol=1e-12)
    y = ft.batch_norm(x, None, None, w, b, True)  # training without running statistics
    torch.testing.assert_close(y, torch.nn.functional.batch_norm(x, None, None, w, b, True), rtol=1e-12, atol=1e-12)


def test_running_statistics_in_strided_buffers_update_like_torch():
    # Contiguous float32/float64 buffers are updated by the kernel call itself; strided views take the general
    # path. Both must match torch, in place.
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 5, 7, generator=gen)
    store_a, store_b = torch.zeros(2, 10), torch.zeros(2, 10)
    for rm_a, rv_a, rm_b, rv_b in (
        (torch.zeros(5), torch.ones(5), torch.zeros(5), torch.ones(5)),
        (store_a[0, ::2], store_a[1, ::2].fill_(1), store_b[0, ::2], store_b[1, ::2].fill_(1)),
    ):
        for momentum in (0.1, 0.5):
            ft.batch_norm(x, rm_a, rv_a, None, None, True, momentum)
            torch.nn.functional.batch_norm(x, rm_b, rv_b, None, None, True, momentum)
        torch.testing.assert_close(rm_a, rm_b, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(rv_a, rv_b, rtol=1e-6, atol=1e-7)
    assert store_a[0, 1::2].abs().sum() == 0  # the entries between the view's were left alone


def test_gradcheck_in_float64():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, 4, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    b = torch.rand(3, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(lambda x, w, b: ft.batch_norm(x, None, None, w, b, True), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: ft.batch_norm(x, rm, rv, w, b, False), (x, w, b))
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: ft.batch_norm(x, None, None, w, b, True), (xc, w, b))


def test_opcheck_every_operator():
    gen = torch.Generator().manual_seed(4)
    d = torch.float64
    x = torch.randn(4, 3, 5, 5, dtype=d, generator=gen, requires_grad=True)
    w = torch.rand(3, dtype=d, requires_grad=True)
    b = torch.rand(3, dtype=d, requires_grad=True)
    r = torch.randn(4, 3, 5, 5, dtype=d, generator=gen, requires_grad=True)
    m, v = torch.randn(3, dtype=d), torch.rand(3, dtype=d) + 0.5
    ops = torch.ops.fastbn
    cases = [
        (ops.batch_norm_train, (x, w, b, None, 1e-5, 0, 0.01)),
        (ops.batch_norm_train, (x.to(memory_format=torch.channels_last), w, b, r, 1e-5, 1, 0.01)),
        (ops.batch_norm_train, (x, None, None, None, 1e-5, 3, 0.01)),
        (ops.batch_norm_infer, (x, m, v, w, b, r, 1e-5, 2, 0.1)),
    ]
    # The backward operator has no derivative of its own (double backward raises): inputs without grad.
    xd, wd, bd = x.detach(), w.detach(), b.detach()
    cases += [
        (ops.batch_norm_backward, (torch.randn_like(xd), xd, None, m, v, wd, bd, 1e-5, True, 0, 0.01, False)),
        (ops.batch_norm_backward, (torch.randn_like(xd), xd, xd.sigmoid(), m, v, wd, bd, 1e-5, False, 3, 0.01, True)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_operators_called_directly_refuse_a_dtype_their_kernels_do_not_take():
    ops = torch.ops.fastbn
    x = torch.ones(4, 3, 5, dtype=torch.int32)
    m, v = torch.zeros(3), torch.ones(3)
    for call in (
        lambda: ops.batch_norm_train(x, None, None, None, 1e-5, 0, 0.01),
        lambda: ops.batch_norm_infer(x, m, v, None, None, None, 1e-5, 0, 0.01),
        lambda: ops.batch_norm_backward(x, x, None, m, v, None, None, 1e-5, True, 0, 0.01, False),
    ):
        with pytest.raises(TypeError, match="float32, float64, bfloat16 or float16, got torch.int32"):
            call()


def test_double_backward_raises_a_clear_error():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    bn = ft.BatchNorm1d(3, dtype=torch.float64)
    y = bn(x)
    (g,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


class ConvBNReLU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.act = torch.nn.ReLU(inplace=True)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.act(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("fuse", [False, True])
def test_torch_compile_fullgraph_with_backward_matches_eager_stock(fuse):
    torch.manual_seed(0)
    stock = ConvBNReLU()
    ours = ft.convert(ConvBNReLU(), fuse=fuse)
    ours.load_state_dict(stock.state_dict())
    compiled = torch.compile(ours, fullgraph=True)
    x = torch.randn(4, 3, 8, 8)
    for _ in range(2):
        la, lb = compiled(x).square().sum(), stock(x).square().sum()
        la.backward()
        lb.backward()
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.conv.weight.grad, stock.conv.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.bn.running_var, stock.bn.running_var, rtol=1e-6, atol=1e-6)
    assert int(ours.bn.num_batches_tracked) == 2


def test_torch_export_of_an_eval_model():
    torch.manual_seed(0)
    stock = ConvBNReLU().eval()
    ours = ft.convert(ConvBNReLU()).eval()
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(2, 3, 8, 8)
    ep = torch.export.export(ours, (x,))
    assert any("fastbn" in str(n.target) for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(x), stock(x), rtol=1e-5, atol=1e-5)


class Nested(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6))
        self.b = torch.nn.ModuleList([torch.nn.BatchNorm2d(3), torch.nn.BatchNorm3d(2, affine=False)])
        self.sync = torch.nn.SyncBatchNorm(5)  # not one of the three classes: left alone
        self.bn = torch.nn.BatchNorm1d(6, momentum=None, track_running_stats=False)


def test_convert_and_revert_keep_every_tensor_and_flag():
    m = Nested()
    m.a[1].weight.requires_grad_(False)
    m.b[0].eval()
    m.double()
    tensors = {k: v for k, v in m.state_dict(keep_vars=True).items()}
    converted = ft.convert(m)
    assert type(converted.a[1]) is ft.BatchNorm1d and type(converted.b[1]) is ft.BatchNorm3d
    assert type(converted.sync) is torch.nn.SyncBatchNorm and type(converted.bn) is ft.BatchNorm1d
    for k, v in converted.state_dict(keep_vars=True).items():
        assert v is tensors[k], k  # the same tensors: device, dtype, requires_grad and optimizer references kept
    assert not converted.a[1].weight.requires_grad and not converted.b[0].training and converted.a[1].training
    assert converted.bn.momentum is None and not converted.bn.track_running_stats
    back = ft.revert(converted)
    assert type(back.a[1]) is torch.nn.BatchNorm1d and type(back.b[1]) is torch.nn.BatchNorm3d
    for k, v in back.state_dict(keep_vars=True).items():
        assert v is tensors[k], k
    root = ft.convert(torch.nn.BatchNorm2d(3))
    assert type(root) is ft.BatchNorm2d and type(ft.revert(root)) is torch.nn.BatchNorm2d


def test_an_empty_batch_in_eval_gives_an_empty_output():
    bn = ft.BatchNorm2d(4).eval()
    x = torch.randn(0, 4, 3, 3, requires_grad=True)
    y = bn(x)
    assert y.shape == (0, 4, 3, 3)
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_state_dict_round_trips_both_ways():
    ref = torch.nn.BatchNorm2d(4)
    ref(torch.randn(3, 4, 2, 2))
    ours = ft.BatchNorm2d(4)
    ours.load_state_dict(ref.state_dict())
    back = torch.nn.BatchNorm2d(4)
    back.load_state_dict(ours.state_dict())
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v)
    assert ours._version == ref._version  # versioned state_dict (num_batches_tracked migration) is torch's


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda bn: bn(torch.randn(1, 4, 1, 1)), ValueError, "Expected more than 1 value per channel when training"),
        (lambda bn: bn(torch.randn(0, 4, 2, 2)), ValueError, "Expected more than 1 value per channel when training"),
        (lambda bn: bn(torch.randn(2, 4, 3)), ValueError, "expected 4D input"),
        (lambda bn: bn(torch.randn(2, 5, 3, 3)), RuntimeError, "4 elements not 5|should contain"),
        (lambda bn: ft.batch_norm(torch.randn(2, 4), None, None, training=False), RuntimeError, "evaluation mode"),
        (lambda bn: ft.batch_norm(torch.randn(2, 4), None, None, training=True, activation="gelu"), ValueError, "relu"),
        (lambda bn: bn(torch.randn(2, 4, 3, 3, dtype=torch.float64)), RuntimeError, "dtype"),
    ],
)
def test_bad_input_raises_like_torch_and_changes_nothing(call, exc, match):
    bn = ft.BatchNorm2d(4)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with pytest.raises(exc, match=match):
        call(bn)
    for k, v in bn.state_dict().items():
        torch.testing.assert_close(v, before[k])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_half_precision_tensors_with_float32_parameters(dtype, channels_last):
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(8, 6, 5, 5, generator=gen).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ours, ref = ft.BatchNorm2d(6), torch.nn.BatchNorm2d(6)
    xa, xb = x.clone().requires_grad_(), x.float().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    assert ya.dtype == dtype
    ulp = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    torch.testing.assert_close(ya.float(), yb.to(dtype).float(), rtol=ulp, atol=ulp)
    dy = torch.randn(x.shape, generator=gen).to(dtype)
    ya.backward(dy)
    yb.backward(dy.float())
    assert xa.grad.dtype == dtype and ours.weight.grad.dtype == torch.float32
    torch.testing.assert_close(xa.grad.float(), xb.grad, rtol=4 * ulp, atol=4 * ulp)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-5, atol=1e-5)
    half_params = ft.BatchNorm2d(6, dtype=dtype)  # a model moved to the half type entirely
    assert half_params(x).dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_an_inplace_relu_after_the_batch_norm_trains_like_torch_in_float64(dtype, channels_last):
    # torch.nn.ReLU(inplace=True) after a batch norm (ResNet's stem): autograd forbids in-place changes of a
    # custom Function's output that is a view, so outputs (from the cache of large buffers too: 2.4 MB here)
    # must own their storage.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 64, 24, 24, generator=gen)
    net = torch.nn.Sequential(torch.nn.BatchNorm2d(64), torch.nn.ReLU(inplace=True))
    ref = net.double()
    x64 = x.double().requires_grad_()
    (ref(x64) ** 2).sum().backward()
    ours = ft.convert(torch.nn.Sequential(torch.nn.BatchNorm2d(64), torch.nn.ReLU(inplace=True)))
    xa = x.to(dtype)
    if channels_last:
        xa = xa.contiguous(memory_format=torch.channels_last)
    xa.requires_grad_()
    y = ours(xa)
    assert y._base is None and y.dtype == dtype
    (y.float() ** 2).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(xa.grad.double(), x64.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(ours[0].weight.grad.double(), ref[0].weight.grad, rtol=tol, atol=tol * 100)


def test_import_fastbn_never_imports_torch_and_the_error_names_pip():
    code = "import sys, fastbn; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import sys; sys.modules['torch'] = None\ntry:\n import fastbn.torch\nexcept ImportError as e:\n print(e)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "pip install torch" in out


def test_requires_grad_cpu_tensors_in_the_numpy_api_are_read_detached():
    import fastbn

    x = torch.randn(6, 3, requires_grad=True)
    y, mean, var = fastbn.batch_norm_train(x)
    assert isinstance(y, np.ndarray)
    np.testing.assert_allclose(mean, x.detach().mean(0).numpy(), rtol=1e-6, atol=1e-7)


def test_inductor_hands_the_ops_its_own_layout_without_copies():
    # Inductor runs CPU convolutions channels-last even in an NCHW model. The ops take any dense layout
    # (flexible_layout), so each batch norm must see the convolution's output as it is: the same strides,
    # rather than a copy into the layout seen while tracing and another one back.
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    stock = ConvBNReLU().eval()
    ours = ft.convert(ConvBNReLU()).eval()
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch._dynamo.reset()
    with torch.no_grad(), torch._inductor.config.patch(force_disable_caches=True):
        y, codes = run_and_get_code(torch.compile(ours, fullgraph=True), x)
    torch.testing.assert_close(y, stock(x), rtol=1e-5, atol=1e-5)
    strides = {}
    for stride, op in re.findall(r"assert_size_stride\(\w+, \([^)]*\), (\([^)]*\)), '([\w.]+)'\)", "".join(codes)):
        strides.setdefault(stride, set()).add(op)
    conv = {s for s, ops in strides.items() if "torch.ops.aten.convolution.default" in ops}
    ours_ = {s for s, ops in strides.items() if "torch.ops.fastbn.batch_norm_infer.default" in ops}
    assert conv and ours_, strides
    assert ours_ <= conv, strides
