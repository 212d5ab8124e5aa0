"""fastbn.torch.convert(model, fuse=True) and the fused modules: the patterns are found by tracing, a batch norm
whose output has other users stays unfused, untraceable models are fused submodule by submodule, and train and
eval results (outputs, gradients, running statistics) are those of the stock model."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as TF
from torch import nn

import fastbn.torch as ft


class Block(nn.Module):
    """A ResNet basic block: bn1 -> relu, and bn2 -> += identity -> relu."""

    def __init__(self, c=4, act=None):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.act = act or nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.act(out)


class Functional(nn.Module):
    """Activations as functions and methods; an addition written the other way round."""

    def __init__(self):
        super().__init__()
        self.bn1 = nn.BatchNorm1d(6)
        self.bn2 = nn.BatchNorm1d(6)
        self.bn3 = nn.BatchNorm1d(6)
        self.bn4 = nn.BatchNorm1d(6)

    def forward(self, x):
        a = torch.sigmoid(self.bn1(x))
        b = TF.leaky_relu(self.bn2(x), 0.2)
        c = (x + self.bn3(a)).relu()
        d = self.bn4(b)
        return a + b + c + d + d.mean()  # bn4's output has two users: not fused


class Untraceable(nn.Module):
    """Data-dependent control flow at the top; fusable blocks below."""

    def __init__(self):
        super().__init__()
        self.block = Block()
        self.head = nn.Sequential(nn.BatchNorm2d(4), nn.Sigmoid())

    def forward(self, x):
        if x.sum() > 0:  # torch.fx cannot trace this
            x = x * 2
        return self.head(self.block(x))


def fused_count(model):
    return sum(isinstance(m, (ft.BatchNormAct1d, ft.BatchNormAct2d, ft.BatchNormAct3d)) for m in model.modules())


def check_same(stock, model, x, steps=3):
    for step in range(steps):
        if step == steps - 1:
            stock.eval()
            model.eval()
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = model(xa), stock(xb)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        ya.square().sum().backward()
        yb.square().sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)
    sa, sb = model.state_dict(), stock.state_dict()
    assert sa.keys() == sb.keys()
    for k in sb:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-5)
    for (na, pa), (nb, pb) in zip(model.named_parameters(), stock.named_parameters()):
        assert na == nb
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-4)


ACTS = [nn.ReLU(inplace=True), nn.LeakyReLU(0.1), nn.Sigmoid()]


@pytest.mark.parametrize("act", ACTS, ids=["relu", "leaky", "sigmoid"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_residual_block_fuses_both_patterns_and_trains_like_stock(act, channels_last):
    torch.manual_seed(0)
    stock = Block(act=act)
    model = ft.convert(Block(act=act), fuse=True)
    model.load_state_dict(stock.state_dict())
    assert isinstance(model, torch.fx.GraphModule) and fused_count(model) == 2
    assert "+=" not in model.code and "iadd" not in model.code  # the addition went into bn2
    x = torch.randn(3, 4, 6, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    check_same(stock, model, x)


def test_functions_methods_and_other_users():
    torch.manual_seed(1)
    stock = Functional()
    model = ft.convert(Functional(), fuse=True)
    model.load_state_dict(stock.state_dict())
    kinds = {n: (type(m).__name__, getattr(m, "activation", None)) for n, m in model.named_modules() if n}
    assert kinds["bn1"] == ("BatchNormAct1d", "sigmoid")
    assert kinds["bn2"] == ("BatchNormAct1d", "leaky_relu") and model.bn2.negative_slope == 0.2
    assert kinds["bn3"] == ("BatchNormAct1d", "relu")  # relu(x + bn3(a)): the residual on the left
    assert kinds["bn4"] == ("BatchNorm1d", None)  # two users
    check_same(stock, model, torch.randn(8, 6))


def test_untraceable_model_is_fused_per_submodule():
    torch.manual_seed(2)
    stock = Untraceable()
    model = ft.convert(Untraceable(), fuse=True)
    model.load_state_dict(stock.state_dict())
    assert type(model) is Untraceable and fused_count(model) == 3
    check_same(stock, model, torch.randn(2, 4, 5, 5).abs())


def test_revert_of_a_fused_model_runs_on_torch_alone():
    torch.manual_seed(3)
    stock = Block()
    model = ft.convert(Block(), fuse=True)
    model.load_state_dict(stock.state_dict())
    back = ft.revert(model)
    assert fused_count(back) == 0 and sum(type(m) is ft.TorchBatchNormAct2d for m in back.modules()) == 2
    assert "conv_bn" not in back.code and "self.conv1(" in back.code  # the folding undone too
    assert not any(type(m).__module__.startswith("fastbn.torch.modules") for m in back.modules())
    check_same(stock, back, torch.randn(3, 4, 6, 6))


def test_batch_norm_act_modules_and_functional_options():
    torch.manual_seed(4)
    m = ft.BatchNormAct2d(3, activation="leaky_relu", negative_slope=0.3)
    ref = nn.BatchNorm2d(3)
    x, r = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(m(x, r), TF.leaky_relu(ref(x) + r, 0.3), rtol=1e-5, atol=1e-5)
    assert "activation='leaky_relu'" in repr(m)
    with pytest.raises(ValueError, match="unknown activation"):
        ft.BatchNormAct2d(3, activation="gelu")
    y = ft.batch_norm(x, None, None, training=True, activation="sigmoid", residual=r)
    torch.testing.assert_close(y, torch.sigmoid(TF.batch_norm(x, None, None, training=True) + r), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_folds_the_batch_norm_into_the_convolution(channels_last):
    """Under no_grad in eval mode, conv -> bn (plain, fused, fused with a residual) runs as one convolution with
    folded weights; the result is the stock model's up to rounding, and the folded weights follow any change of
    the parameters or statistics (load_state_dict, in-place updates)."""
    torch.manual_seed(4)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block(6)
            self.conv = nn.Conv2d(6, 5, 1, bias=True)
            self.bn = nn.BatchNorm2d(5)  # conv with a bias, a plain batch norm

        def forward(self, x):
            return self.bn(self.conv(self.block(x)))

    stock = Net()
    model = ft.convert(Net(), fuse=True)
    model.load_state_dict(stock.state_dict())
    assert model.code.count("conv_bn(") == 3 and fused_count(model) == 2
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    stock, model = stock.to(memory_format=fmt), model.to(memory_format=fmt)
    x = torch.randn(4, 6, 7, 7).contiguous(memory_format=fmt)
    for _ in range(2):  # running statistics away from 0 and 1
        model(x)
        stock(x)
    stock.eval()
    model.eval()
    with torch.no_grad():
        want = stock(x)
        got = model(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # A pickled (or saved) model keeps the folding, and computes the same.
        again = pickle.loads(pickle.dumps(model))
        assert again.code.count("conv_bn(") == 3
        torch.testing.assert_close(again(x), got, rtol=0, atol=0)
        # New values through load_state_dict and in place: the folded weights follow.
        other = Net()
        other.eval()
        for m in other.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
        model.load_state_dict(other.state_dict())
        other = other.to(memory_format=fmt)
        torch.testing.assert_close(model(x), other(x), rtol=1e-5, atol=1e-5)
        model.bn.bias.add_(1.0)
        other.bn.bias.add_(1.0)
        torch.testing.assert_close(model(x), other(x), rtol=1e-5, atol=1e-5)
    # With autograd on, the modules run as written (gradients reach the batch norm's parameters).
    y = model(x)
    y.sum().backward()
    assert model.bn.weight.grad is not None
