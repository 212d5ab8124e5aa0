"""Converting models: ``convert`` swaps every torch.nn.BatchNorm1d/2d/3d for fastbn's class (sharing its
parameters and buffers, as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does) and, with ``fuse=True``,
also fuses batch norm -> activation and batch norm -> add -> activation found by tracing with torch.fx;
``revert`` is the inverse."""

from __future__ import annotations

import operator
import weakref

import torch
import torch.nn.functional as TF
from torch import fx, nn

from ..functional import fold
from . import modules as M

__all__ = ["convert", "revert", "conv_bn", "TorchBatchNormAct1d", "TorchBatchNormAct2d", "TorchBatchNormAct3d"]

_TO_FAST = {nn.BatchNorm1d: M.BatchNorm1d, nn.BatchNorm2d: M.BatchNorm2d, nn.BatchNorm3d: M.BatchNorm3d}
_TO_TORCH = {fast: torch_cls for torch_cls, fast in _TO_FAST.items()}
_TO_ACT = {M.BatchNorm1d: M.BatchNormAct1d, M.BatchNorm2d: M.BatchNormAct2d, M.BatchNorm3d: M.BatchNormAct3d}
_ACT_TO_TORCH = {M.BatchNormAct1d: nn.BatchNorm1d, M.BatchNormAct2d: nn.BatchNorm2d, M.BatchNormAct3d: nn.BatchNorm3d}
_FAST = tuple(_TO_TORCH) + tuple(_ACT_TO_TORCH)


def _swap(module: nn.Module, cls) -> nn.Module:
    """A new ``cls`` batch norm holding ``module``'s own parameters and buffers (same tensors)."""
    new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
    if module.affine:
        with torch.no_grad():
            new.weight = module.weight
            new.bias = module.bias
    new.running_mean = module.running_mean
    new.running_var = module.running_var
    new.num_batches_tracked = module.num_batches_tracked
    new.training = module.training
    if hasattr(module, "qconfig"):
        new.qconfig = module.qconfig
    return new


def _replace(module: nn.Module, table: dict) -> nn.Module:
    out = _swap(module, table[type(module)]) if type(module) in table else module
    for name, child in module.named_children():
        out.add_module(name, _replace(child, table))
    return out


def convert(module: nn.Module, fuse: bool = False) -> nn.Module:
    """Replace every ``torch.nn.BatchNorm1d/2d/3d`` (those exact classes) in ``module`` by fastbn's class,
    keeping weight, bias, running statistics, num_batches_tracked, training flag, requires_grad, device and
    dtype (the same tensors). Returns the (possibly new) root.

    ``fuse=True`` also fuses, without touching the model's code, each batch norm followed by ReLU, LeakyReLU or
    Sigmoid, and each batch norm followed by an addition and then one of those (a residual block's end), into
    one :class:`BatchNormAct2d`-style module: the model, or where it cannot be traced as a whole, each
    submodule that owns a batch norm, is traced with torch.fx and rewritten as a GraphModule. A batch norm
    whose output has other users stays unfused. A convolution feeding only a batch norm becomes one
    :func:`conv_bn` call, which in CPU inference (autograd off, eval mode) folds the batch norm into the
    convolution's weight and bias. Train and eval results are those of the stock model (folding: up to
    rounding).
    """
    out = _replace(module, _TO_FAST)
    return _fuse(out) if fuse else out


def revert(module: nn.Module) -> nn.Module:
    """The inverse of :func:`convert`: fastbn's batch norms become torch.nn.BatchNorm1d/2d/3d again (same
    tensors). Fused modules become :class:`TorchBatchNormAct1d` (2d, 3d): a torch.nn.BatchNorm*d subclass that
    applies the residual and activation with PyTorch's own ops (same state_dict keys)."""
    out = _replace(module, _TO_TORCH)
    for child in out.modules():
        if isinstance(child, fx.GraphModule):
            _unfold_graph(child)
    for name, child in list(out.named_modules()):
        if type(child) in _ACT_TO_TORCH and name:
            _set_submodule(out, name, _to_torch_act(child))
    return _to_torch_act(out) if type(out) in _ACT_TO_TORCH else out


class _TorchAct:
    """act(torch batch norm(x) [+ residual]) with PyTorch's ops."""

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        z = super().forward(input)
        if residual is not None:
            z = z + residual
        if self.activation == "relu":
            return torch.relu(z)
        if self.activation == "leaky_relu":
            return TF.leaky_relu(z, self.negative_slope)
        if self.activation == "sigmoid":
            return torch.sigmoid(z)
        return z


class TorchBatchNormAct1d(_TorchAct, nn.BatchNorm1d):
    """What :func:`revert` makes of a fused BatchNormAct1d."""


class TorchBatchNormAct2d(_TorchAct, nn.BatchNorm2d):
    """What :func:`revert` makes of a fused BatchNormAct2d."""


class TorchBatchNormAct3d(_TorchAct, nn.BatchNorm3d):
    """What :func:`revert` makes of a fused BatchNormAct3d."""


_ACT_TO_TORCH_ACT = {M.BatchNormAct1d: TorchBatchNormAct1d, M.BatchNormAct2d: TorchBatchNormAct2d,
                     M.BatchNormAct3d: TorchBatchNormAct3d}  # fmt: skip


def _to_torch_act(fused: nn.Module) -> nn.Module:
    new = _swap(fused, _ACT_TO_TORCH_ACT[type(fused)])
    new.activation, new.negative_slope = fused.activation, fused.negative_slope
    return new


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


# ------------------------------------------------------------------------------------------------------------
# Fusion


def _activation_of(node: fx.Node, gm: nn.Module):
    """(name, negative_slope) if the node is a ReLU, LeakyReLU or Sigmoid with node.args[0] as its input."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if type(mod) is nn.ReLU:
            return "relu", 0.01
        if type(mod) is nn.LeakyReLU:
            return "leaky_relu", float(mod.negative_slope)
        if type(mod) is nn.Sigmoid:
            return "sigmoid", 0.01
        return None
    if node.op == "call_function":
        if node.target in (torch.relu, TF.relu, torch.relu_, TF.relu_):
            return ("relu", 0.01) if not node.kwargs or set(node.kwargs) <= {"inplace"} else None
        if node.target in (torch.sigmoid, TF.sigmoid):
            return "sigmoid", 0.01
        if node.target in (TF.leaky_relu, TF.leaky_relu_):
            slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
            return ("leaky_relu", float(slope)) if isinstance(slope, (int, float)) else None
    if node.op == "call_method" and node.target in ("relu", "relu_", "sigmoid", "sigmoid_") and len(node.args) == 1:
        return ("relu" if node.target.startswith("relu") else "sigmoid"), 0.01
    return None


_ADDS = {operator.add, operator.iadd, torch.add}


def _residual_of(add: fx.Node, bn: fx.Node):
    """The other operand if ``add`` is bn + other or other + bn (a plain addition of two tensors)."""
    if add.op == "call_function" and add.target in _ADDS and len(add.args) == 2 and not add.kwargs:
        a, b = add.args
    elif add.op == "call_method" and add.target in ("add", "add_") and len(add.args) == 2 and not add.kwargs:
        a, b = add.args
    else:
        return None
    if a is bn and isinstance(b, fx.Node):
        return b
    if b is bn and isinstance(a, fx.Node):
        return a
    return None


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _fuse_graph(gm: fx.GraphModule) -> int:
    """Rewrites bn -> act and bn -> add -> act in place; returns how many were fused."""
    fused = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or type(gm.get_submodule(node.target)) not in _TO_ACT:
            continue
        if len(node.args) != 1 or node.kwargs:
            continue
        nxt = _only_user(node)
        if nxt is None:
            continue
        residual, act_node = None, nxt
        act = _activation_of(nxt, gm)
        if act is None:
            residual = _residual_of(nxt, node)
            act_node = _only_user(nxt) if residual is not None else None
            act = _activation_of(act_node, gm) if act_node is not None else None
            if act is None or act_node.args[0] is not nxt:
                continue
        elif nxt.args[0] is not node:
            continue
        bn = gm.get_submodule(node.target)
        new = _TO_ACT[type(bn)](bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                                activation=act[0], negative_slope=act[1])  # fmt: skip
        for attr in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            setattr(new, attr, getattr(bn, attr))
        new.training = bn.training
        _set_submodule(gm, node.target, new)
        with gm.graph.inserting_after(act_node):
            args = (node.args[0],) if residual is None else (node.args[0], residual)
            call = gm.graph.call_module(node.target, args)
        act_node.replace_all_uses_with(call)
        for dead in (act_node, nxt, node) if residual is not None else (act_node, node):
            if dead is not call and not dead.users:
                gm.graph.erase_node(dead)
        fused += 1
    if fused:
        gm.graph.lint()
        gm.recompile()
    return fused


# Inference: a convolution whose only user is a batch norm (plain or fused) becomes one call of conv_bn, which
# folds the batch norm into the convolution's weight and bias when autograd is off and the statistics are frozen.

_CONV_DIMS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_BN_DIMS = {M.BatchNorm1d: 1, M.BatchNorm2d: 2, M.BatchNorm3d: 3, M.BatchNormAct1d: 1, M.BatchNormAct2d: 2,
            M.BatchNormAct3d: 3}  # fmt: skip


# batch norm -> (key, folded weight, folded bias); weak, so that copies and pickles of a model carry none of it.
_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _folded(conv: nn.Module, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The convolution's weight and bias with the batch norm's frozen affine map folded in (fastbn.fold, in
    float64), cached until any of the six tensors is replaced or changed in place."""
    tensors = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    key = tuple(None if t is None else (t.data_ptr(), t._version, t.dtype) for t in tensors) + (bn.eps,)
    cached = _FOLDED.get(bn)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    w, b = fold(*(None if t is None else t.detach().numpy() for t in tensors[:2]),
                bn.running_mean.numpy(), bn.running_var.numpy(),
                *(None if t is None else t.detach().numpy() for t in tensors[2:4]), eps=bn.eps)  # fmt: skip
    folded_w, folded_b = torch.from_numpy(w), torch.from_numpy(b)
    _FOLDED[bn] = (key, folded_w, folded_b)
    return folded_w, folded_b


def conv_bn(x: torch.Tensor, conv: nn.Module, bn: nn.Module, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``bn(conv(x))`` (``bn(conv(x), residual)`` for a fused batch norm). In inference — autograd off, the batch
    norm in eval mode with running statistics, float32/float64 CPU weights, not under torch.compile — the batch
    norm is folded into the convolution (``y = conv(x; w * s, (b - mean) * s + beta)``,
    ``s = gamma / sqrt(var + eps)``) and only the residual and activation remain; otherwise the two modules run
    as written."""
    if isinstance(x, fx.Proxy):  # traced again (a GraphModule unpickled, or traced by the user): stay one call
        args = (x, conv, bn) if residual is None else (x, conv, bn, residual)
        return x.tracer.create_proxy("call_function", conv_bn, args, {})
    if (
        bn.training
        or bn.running_mean is None
        or torch.is_grad_enabled()
        or torch.compiler.is_compiling()
        or x.device.type != "cpu"
        or conv.weight.dtype not in (torch.float32, torch.float64)
    ):
        y = conv(x)
        return bn(y) if residual is None else bn(y, residual)
    y = conv._conv_forward(x, *_folded(conv, bn))
    if residual is not None:
        y.add_(residual)
    act = getattr(bn, "activation", None)
    if act == "relu":
        return y.relu_()
    if act == "leaky_relu":
        return TF.leaky_relu_(y, bn.negative_slope)
    if act == "sigmoid":
        return y.sigmoid_()
    return y


def _fold_graph(gm: fx.GraphModule) -> int:
    """Rewrites conv -> batch norm (the convolution's output used by the batch norm alone) into conv_bn calls."""
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or type(gm.get_submodule(node.target)) not in _BN_DIMS or node.kwargs:
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.args) != 1 or src.kwargs:
            continue
        conv, bn = gm.get_submodule(src.target), gm.get_submodule(node.target)
        if _CONV_DIMS.get(type(conv)) != _BN_DIMS[type(bn)] or _only_user(src) is not node:
            continue
        if conv.out_channels != bn.num_features:
            continue
        with gm.graph.inserting_before(node):
            conv_ref = gm.graph.get_attr(src.target)
            bn_ref = gm.graph.get_attr(node.target)
            call = gm.graph.call_function(conv_bn, (src.args[0], conv_ref, bn_ref, *node.args[1:]))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        gm.graph.erase_node(src)
        folded += 1
    if folded:
        gm.graph.lint()
        gm.recompile()
    return folded


def _unfold_graph(gm: fx.GraphModule) -> None:
    """The inverse of _fold_graph: each conv_bn call back into the two module calls."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not conv_bn:
            continue
        x, conv_ref, bn_ref, *rest = node.args
        with gm.graph.inserting_before(node):
            y = gm.graph.call_module(conv_ref.target, (x,))
            out = gm.graph.call_module(bn_ref.target, (y, *rest))
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
        for ref in (conv_ref, bn_ref):
            if not ref.users:
                gm.graph.erase_node(ref)
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with fastbn's batch norms as leaves (they are not under torch.nn)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _FAST) or super().is_leaf_module(m, qualname)


def _owns_batch_norm(module: nn.Module) -> bool:
    return any(type(m) in _TO_ACT for m in module.modules())


def _fuse(module: nn.Module) -> nn.Module:
    """Trace the module (or, failing that, each child that owns a batch norm) and fuse."""
    if not _owns_batch_norm(module) or type(module) in _TO_ACT:
        return module
    try:
        tracer = _Tracer()
        graph = tracer.trace(module)
        gm = fx.GraphModule(tracer.root, graph, type(module).__name__)
    except Exception:
        for name, child in list(module.named_children()):
            new = _fuse(child)
            if new is not child:
                setattr(module, name, new)
        return module
    gm.training = module.training
    fused = _fuse_graph(gm)
    return gm if _fold_graph(gm) + fused else module
