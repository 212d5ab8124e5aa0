"""The BatchNorm layer: owns gamma, beta and the running statistics, with PyTorch's semantics."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

from . import cuda
from . import functional as F
from ._layout import check_activation, check_eps, normalize_axis
from ._types import SUPPORTED, param_dtype, storage_dtype

__all__ = ["BatchNorm"]


def _check_dtype(dtype) -> np.dtype:
    try:
        d = storage_dtype(dtype)
    except TypeError as e:
        raise TypeError(f"fastbn: dtype must be {SUPPORTED}, got {dtype!r}") from e
    if d is None:
        raise TypeError(f"fastbn: dtype must be {SUPPORTED}, got {np.dtype(dtype)}")
    return d


def _check_momentum(momentum) -> float | None:
    if momentum is None:
        return None
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"fastbn: momentum must be a number in [0, 1] or None, got {type(momentum).__name__}")
    m = float(momentum)
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"fastbn: momentum must be in [0, 1] or None, got {momentum}")
    return m


class BatchNorm:
    """Batch normalization over the channel axis ``axis`` of inputs with at least 2 dimensions.

    Semantics follow ``torch.nn.BatchNorm1d/2d/3d``: in training mode the layer normalizes with the batch mean
    and biased variance and updates ``running = (1 - momentum) * running + momentum * batch`` with the
    UNBIASED batch variance (``momentum=None``: cumulative average over ``num_batches_tracked``); in eval mode it
    normalizes with the running statistics, or with batch statistics when ``track_running_stats=False``.
    Keras users: Keras's ``momentum`` is ``1 - momentum`` here (Keras 0.99 is fastbn/PyTorch 0.01).

    Parameters
    ----------
    num_features : int
        Number of channels C.
    eps : float
        Added to the variance (> 0).
    momentum : float in [0, 1] or None
        Weight of the new batch in the running averages; None for a cumulative average.
    affine : bool
        Learn gamma (init 1) and beta (init 0). Without it, ``gamma``/``beta`` and their gradients are None.
    track_running_stats : bool
        Keep running_mean (init 0), running_var (init 1) and num_batches_tracked.
    axis : int
        The channel axis of the inputs (1 for (N, C, ...), -1 for channels-last).
    dtype : float32, float64, float16 or bfloat16 (``ml_dtypes.bfloat16``)
        dtype of the accepted inputs and of the outputs. Parameters, statistics and gradients are float64 for
        float64 and float32 otherwise (mixed precision: half-precision activations, float32 state).
    activation : None, "relu", "leaky_relu" or "sigmoid"
        Fused after the normalization: ``y = act(gamma * xhat + beta [+ residual])``.
    negative_slope : float
        leaky_relu's slope for negative inputs.
    inplace : bool
        Write y over x and keep only y for the backward ("in-place activated batch norm"): x's memory is
        reused, and xhat is recovered from y. Needs an invertible activation (None, leaky_relu with
        negative_slope > 0, sigmoid), training inputs without a residual, and keeps gamma away from zero.
    device : "cpu" or "cuda"
        Where gamma, beta, their gradients and the running statistics live. With "cuda" they are
        :class:`fastbn.cuda.DeviceArray` objects and inputs must be CUDA arrays (CuPy, PyTorch CUDA tensors, ...);
        ``state_dict()`` still returns NumPy copies.
    """

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        axis: int = 1,
        dtype=np.float32,
        device: str = "cpu",
        activation: str | None = None,
        negative_slope: float = 0.01,
        inplace: bool = False,
    ) -> None:
        if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral):
            raise TypeError(f"fastbn: num_features must be an int, got {type(num_features).__name__}")
        if num_features < 1:
            raise ValueError(f"fastbn: num_features must be >= 1, got {num_features}")
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"fastbn: axis must be an int, got {type(axis).__name__}")
        self.num_features = int(num_features)
        self.eps = check_eps(eps)
        self.momentum = _check_momentum(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.axis = int(axis)
        self.dtype = _check_dtype(dtype)
        self.param_dtype = param_dtype(self.dtype)
        check_activation(activation, negative_slope)
        self.activation = activation
        self.negative_slope = float(negative_slope)
        self.inplace = bool(inplace)
        if self.inplace and (activation == "relu" or (activation == "leaky_relu" and self.negative_slope <= 0)):
            raise ValueError(
                f"fastbn: inplace=True recovers xhat from the output, but {activation} with "
                f"negative_slope={self.negative_slope} is not invertible; use leaky_relu with negative_slope > 0, "
                "sigmoid or no activation"
            )
        if device not in ("cpu", "cuda"):
            raise ValueError(f"fastbn: device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda":
            if self.dtype.itemsize == 2 or activation is not None or self.inplace:
                raise NotImplementedError(
                    "fastbn: half precision, fused activations and inplace run on the CPU only for now"
                )
            cuda.require()
        self.device = device
        self.training = True
        c, d = self.num_features, self.param_dtype
        self.gamma = self._array(np.ones(c, d)) if self.affine else None
        self.beta = self._array(np.zeros(c, d)) if self.affine else None
        self.grad_gamma = self._array(np.zeros(c, d)) if self.affine else None
        self.grad_beta = self._array(np.zeros(c, d)) if self.affine else None
        self.running_mean = self._array(np.zeros(c, d)) if self.track_running_stats else None
        self.running_var = self._array(np.ones(c, d)) if self.track_running_stats else None
        self.num_batches_tracked = 0
        self._saved = None  # what backward needs from the last forward

    # ------------------------------------------------------------------------------------------------------
    # Storage: NumPy arrays on the CPU, DeviceArrays on the GPU

    def _array(self, host: np.ndarray):
        if self.device == "cpu":
            return host
        return cuda.to_device(host)

    def _set(self, target, host: np.ndarray) -> None:
        """Overwrite a state array in place (references held by an optimizer stay valid)."""
        if self.device == "cpu":
            target[...] = host
        else:
            target._buffer.copy_from_host(np.ascontiguousarray(host, dtype=self.param_dtype))

    def _host(self, a) -> np.ndarray:
        return a.copy() if self.device == "cpu" else a.get()

    def to(self, device: str) -> BatchNorm:
        """Move the parameters, gradients and running statistics to "cpu" or "cuda"; returns self."""
        if device not in ("cpu", "cuda"):
            raise ValueError(f"fastbn: device must be 'cpu' or 'cuda', got {device!r}")
        if device == self.device:
            return self
        if device == "cuda":
            if self.dtype.itemsize == 2 or self.activation is not None or self.inplace:
                raise NotImplementedError(
                    "fastbn: half precision, fused activations and inplace run on the CPU only for now"
                )
            cuda.require()
        names = ("gamma", "beta", "grad_gamma", "grad_beta", "running_mean", "running_var")
        host = {k: None if getattr(self, k) is None else self._host(getattr(self, k)) for k in names}
        self.device = device
        for k, v in host.items():
            setattr(self, k, None if v is None else self._array(v))
        self._saved = None
        return self

    # ------------------------------------------------------------------------------------------------------
    # Modes

    def train(self, mode: bool = True) -> BatchNorm:
        """Set training mode (batch statistics, running averages updated); returns self."""
        self.training = bool(mode)
        return self

    def eval(self) -> BatchNorm:
        """Set eval mode (running statistics when tracked); returns self."""
        return self.train(False)

    # ------------------------------------------------------------------------------------------------------
    # Passes

    def _check_input(self, x, name: str = "x"):
        if self.device == "cuda":
            if not cuda.is_device_array(x):
                raise TypeError(f"fastbn: this BatchNorm lives on the GPU (device='cuda'); got a host {name}")
            a = x
            shape, dtype = cuda.describe(x, name)
        else:
            if cuda.is_device_array(x):
                raise TypeError(f"fastbn: this BatchNorm lives on the CPU; got a GPU {name} (use device='cuda')")
            # Lists and other array-likes take the layer's dtype; arrays must already have it.
            a = x if isinstance(x, np.ndarray) else F._as_array(x, name, self.dtype)
            a = F._as_array(a, name)
            shape, dtype = a.shape, a.dtype
        if dtype != self.dtype:
            raise TypeError(f"fastbn: this BatchNorm has dtype {self.dtype}, got {name} of dtype {dtype}")
        if len(shape) >= 2:
            ax = normalize_axis(self.axis, len(shape))
            if shape[ax] != self.num_features:
                raise ValueError(
                    f"fastbn: expected {self.num_features} channels on axis {self.axis}, got {name} of shape {shape}"
                )
        return a, shape

    def forward(self, x, out=None, residual=None):
        """Normalize ``x`` (then add ``residual`` and apply the activation, when given); in training mode also
        update the running statistics. Returns y (or ``out``).

        The backward reuses x (or, with ``inplace``, y): change neither in place before :meth:`backward`, or
        the gradient is silently wrong."""
        a, shape = self._check_input(x)
        if residual is not None:
            if self.inplace:
                raise ValueError(
                    "fastbn: inplace=True recovers xhat from the output, which is impossible when a residual is "
                    "added before the activation; use inplace=False"
                )
            residual, _ = self._check_input(residual, "residual")
        use_batch = self.training or not self.track_running_stats
        if self.inplace:
            if out is not None:
                raise ValueError("fastbn: inplace=True writes y over x; out= cannot be given")
            if not isinstance(a, np.ndarray) or not a.flags.writeable:
                raise ValueError("fastbn: inplace=True writes y over x, so x must be a writable NumPy array")
            out = a
        fused = {"activation": self.activation, "negative_slope": self.negative_slope, "residual": residual}
        if use_batch:
            y, mean, var = F.batch_norm_train(a, self.gamma, self.beta, axis=self.axis, eps=self.eps, out=out, **fused)
            if self.training and self.track_running_stats:
                self._update_running_stats(mean, var, math.prod(shape) // self.num_features)
        else:
            y = F.batch_norm_infer(
                a, self.running_mean, self.running_var, self.gamma, self.beta, axis=self.axis, eps=self.eps, out=out,
                **fused,
            )  # fmt: skip
            mean, var = self._snapshot(self.running_mean), self._snapshot(self.running_var)
        keep_y = self.activation is not None or self.inplace
        overwritten = not self.inplace and out is not None and self._overlaps(out, a)
        self._saved = (None if self.inplace else a, y if keep_y else None, mean, var, use_batch, overwritten,
                       residual is not None)  # fmt: skip
        return y

    __call__ = forward

    def _snapshot(self, a):
        if self.device == "cpu":
            return a.copy()
        return cuda.copy(a)

    def _overlaps(self, out, a) -> bool:
        if self.device == "cpu":
            return np.may_share_memory(out, a)
        return cuda.overlaps(out, a)

    def _update_running_stats(self, mean, var, n: int) -> None:
        count = self.num_batches_tracked + 1
        factor = 1.0 / count if self.momentum is None else self.momentum
        if self.device == "cuda":
            cuda.update_running_stats(self.running_mean, self.running_var, mean, var, n, factor)
            self.num_batches_tracked = count
            return
        unbiased = var.astype(np.float64) * (n / (n - 1))
        new_mean = (1.0 - factor) * self.running_mean + factor * mean.astype(np.float64)
        new_var = (1.0 - factor) * self.running_var + factor * unbiased
        self.running_mean[...] = new_mean
        self.running_var[...] = new_var
        self.num_batches_tracked = count

    def backward(self, dy, out=None):
        """Gradient with respect to the input of the last forward; sets grad_gamma and grad_beta.

        Uses batch statistics if that forward did (training mode, or eval without running statistics), else the
        running statistics it used, held constant. Returns dx (or ``out``); when the forward had a residual,
        ``(dx, dresidual)``. The forward's input (with ``inplace``, its output) must not have changed since.
        """
        if self._saved is None:
            raise RuntimeError("fastbn: backward() called before any forward()")
        x, y, mean, var, batch_stats, overwritten, had_residual = self._saved
        if overwritten:
            raise RuntimeError(
                "fastbn: backward() needs the input of the last forward(), but forward(x, out=...) wrote over it"
            )
        if self.device == "cuda":
            if not cuda.is_device_array(dy):
                raise TypeError("fastbn: this BatchNorm lives on the GPU (device='cuda'); got a host dy")
            return cuda.backward_into(
                dy, x, mean, var, self.gamma, self.grad_gamma, self.grad_beta, axis=self.axis, eps=self.eps,
                batch_stats=batch_stats, out=out,
            )  # fmt: skip
        if not isinstance(dy, np.ndarray):
            dy = F._as_array(dy, "dy", self.dtype)
        dx, dgamma, dbeta, dres = F._backward(
            dy, x, mean, var, self.gamma, self.axis, self.eps, batch_stats, out, self.affine, self.activation,
            self.negative_slope, y, self.beta, had_residual,
        )  # fmt: skip
        if self.affine:
            self.grad_gamma[...] = dgamma
            self.grad_beta[...] = dbeta
        return (dx, dres) if had_residual else dx

    # ------------------------------------------------------------------------------------------------------
    # Parameters and state

    def parameters(self) -> list[np.ndarray]:
        """[gamma, beta] (the arrays themselves, for an optimizer to update in place); [] without affine."""
        return [self.gamma, self.beta] if self.affine else []

    def gradients(self) -> list[np.ndarray]:
        """[grad_gamma, grad_beta], matching parameters()."""
        return [self.grad_gamma, self.grad_beta] if self.affine else []

    def zero_grad(self) -> None:
        for g in self.gradients():
            self._set(g, np.zeros(self.num_features, self.param_dtype))

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self._set(self.running_mean, np.zeros(self.num_features, self.param_dtype))
            self._set(self.running_var, np.ones(self.num_features, self.param_dtype))
            self.num_batches_tracked = 0

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            self._set(self.gamma, np.ones(self.num_features, self.param_dtype))
            self._set(self.beta, np.zeros(self.num_features, self.param_dtype))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the state under PyTorch's names: weight, bias (affine), running_mean, running_var,
        num_batches_tracked (tracked; an int64 0-d array)."""
        d: dict[str, np.ndarray] = {}
        if self.affine:
            d["weight"] = self._host(self.gamma)
            d["bias"] = self._host(self.beta)
        if self.track_running_stats:
            d["running_mean"] = self._host(self.running_mean)
            d["running_var"] = self._host(self.running_var)
            d["num_batches_tracked"] = np.array(self.num_batches_tracked, dtype=np.int64)
        return d

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Load a state_dict of this class or of ``torch.nn.BatchNorm*d`` (values may be NumPy arrays or CPU
        tensors). Raises ValueError for missing keys, unexpected keys (when strict) or wrong shapes; on any
        error nothing is changed."""
        if not isinstance(state, Mapping):
            raise TypeError(f"fastbn: load_state_dict expects a mapping of names to arrays, got {type(state).__name__}")
        expected = list(self.state_dict().keys())
        missing = [k for k in expected if k not in state]
        if missing:
            raise ValueError(f"fastbn: load_state_dict is missing keys {missing}")
        unexpected = [k for k in state if k not in expected]
        if strict and unexpected:
            raise ValueError(f"fastbn: load_state_dict got unexpected keys {unexpected}")
        new = {}
        for k in expected:
            v = state[k]
            if type(v).__module__.split(".")[0] == "torch" and hasattr(v, "detach"):
                v = v.detach().cpu()
                v = v.float() if v.dtype.is_floating_point and v.element_size() == 2 else v
            v = np.asarray(v)
            if k == "num_batches_tracked":
                if v.shape != () or not np.issubdtype(v.dtype, np.integer) or int(v) < 0:
                    raise ValueError(f"fastbn: num_batches_tracked must be a non-negative integer scalar, got {v!r}")
                new[k] = int(v)
                continue
            if not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)):
                raise TypeError(f"fastbn: {k} must hold numbers, got dtype {v.dtype}")
            if v.shape != (self.num_features,):
                raise ValueError(f"fastbn: {k} must have shape ({self.num_features},), got {v.shape}")
            new[k] = v.astype(self.param_dtype)
        if self.affine:
            self._set(self.gamma, new["weight"])
            self._set(self.beta, new["bias"])
        if self.track_running_stats:
            self._set(self.running_mean, new["running_mean"])
            self._set(self.running_var, new["running_var"])
            self.num_batches_tracked = new["num_batches_tracked"]

    def __repr__(self) -> str:
        return (
            f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, axis={self.axis}, dtype={self.dtype.name}"
            + (f", activation={self.activation!r}" if self.activation else "")
            + (f", negative_slope={self.negative_slope}" if self.activation == "leaky_relu" else "")
            + (", inplace=True" if self.inplace else "")
            + (", device='cuda')" if self.device == "cuda" else ")")
        )
