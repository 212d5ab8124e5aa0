"""A tiny neural-network toolkit in plain NumPy: just enough to train the paper's MLP.

Every layer has the same small interface, which ``fastbn.BatchNorm`` already has, so a batch-norm layer drops
into a network like any other:

- ``forward(x)`` computes the output and remembers what ``backward`` will need;
- ``backward(dy)`` takes dLoss/dOutput and returns dLoss/dInput, storing the gradients of its parameters;
- ``parameters()`` / ``gradients()`` are matching lists of arrays, which an optimizer updates in place;
- ``train()`` / ``eval()`` switch modes (only batch norm behaves differently).

Shapes are (batch, features) throughout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import fastbn

__all__ = [
    "Dense",
    "Sigmoid",
    "Sequential",
    "softmax_cross_entropy",
    "SGD",
    "Momentum",
    "RMSprop",
    "Adam",
    "OPTIMIZERS",
]


class Layer:
    """Defaults for layers without parameters or modes."""

    def parameters(self) -> list[np.ndarray]:
        return []

    def gradients(self) -> list[np.ndarray]:
        return []

    def train(self, mode: bool = True) -> Layer:
        return self

    def eval(self) -> Layer:
        return self.train(False)


class Dense(Layer):
    """Fully connected layer ``y = x @ W (+ b)`` with W drawn from N(0, init_std²).

    ``bias=False`` before batch norm: BN subtracts the batch mean, which removes any constant added here, and its
    own β takes over the bias's role.
    """

    def __init__(
        self, n_in: int, n_out: int, rng: np.random.Generator, init_std: float, bias: bool = True, dtype=np.float32
    ) -> None:
        self.W = (rng.standard_normal((n_in, n_out)) * init_std).astype(dtype)
        self.grad_W = np.zeros_like(self.W)
        self.b = np.zeros(n_out, dtype) if bias else None
        self.grad_b = np.zeros_like(self.b) if bias else None
        self._x = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        y = x @ self.W
        if self.b is not None:
            y += self.b
        return y

    __call__ = forward

    def backward(self, dy: np.ndarray) -> np.ndarray:
        np.matmul(self._x.T, dy, out=self.grad_W)
        if self.b is not None:
            np.sum(dy, axis=0, out=self.grad_b)
        return dy @ self.W.T

    def parameters(self) -> list[np.ndarray]:
        return [self.W] if self.b is None else [self.W, self.b]

    def gradients(self) -> list[np.ndarray]:
        return [self.grad_W] if self.b is None else [self.grad_W, self.grad_b]


class Sigmoid(Layer):
    """Logistic sigmoid. Keeps its last input in ``last_input``: that is what the paper's Fig. 1b/c plots."""

    def __init__(self) -> None:
        self.last_input = None
        self._y = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.last_input = x
        # Written with exp(-|x|) so that no exp overflows for large |x|.
        e = np.exp(-np.abs(x))
        self._y = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
        return self._y

    __call__ = forward

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y = self._y
        return dy * y * (1 - y)


class BatchNormSigmoid(fastbn.BatchNorm):
    """fastbn.BatchNorm with the sigmoid fused into its passes: one pass over the data instead of two, and the
    backward takes the sigmoid's derivative from the output. ``last_input`` is the sigmoid's input (what the
    paper's Fig. 1b/c plots), recovered from the last output as its logit."""

    def __init__(self, num_features: int, **kwargs) -> None:
        super().__init__(num_features, activation="sigmoid", **kwargs)
        self._last = None

    def forward(self, x: np.ndarray, out=None, residual=None) -> np.ndarray:
        self._last = super().forward(x, out=out, residual=residual)
        return self._last

    __call__ = forward

    @property
    def last_input(self) -> np.ndarray:
        y = self._last.astype(np.float64)
        return np.log(y) - np.log1p(-y)


class Sequential(Layer):
    """Layers applied in order; backward runs them in reverse."""

    def __init__(self, layers: Sequence) -> None:
        self.layers = list(layers)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    __call__ = forward

    def backward(self, dy: np.ndarray) -> np.ndarray:
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def parameters(self) -> list[np.ndarray]:
        return [p for layer in self.layers for p in layer.parameters()]

    def gradients(self) -> list[np.ndarray]:
        return [g for layer in self.layers for g in layer.gradients()]

    def train(self, mode: bool = True) -> Sequential:
        for layer in self.layers:
            layer.train(mode)
        return self


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray):
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient with respect to logits.

    Returns ``(loss, dlogits)``; the gradient of softmax followed by cross-entropy is simply
    ``(softmax(logits) - one_hot(labels)) / batch``.
    """
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)  # softmax is shift-invariant; this avoids overflow
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -float(np.mean(log_p[np.arange(n), labels]))
    d = np.exp(log_p)
    d[np.arange(n), labels] -= 1
    d /= n
    return loss, d


# ----------------------------------------------------------------------------------------------------------
# Optimizers. Each one is built with the list of parameter arrays and, at every step, is handed the matching
# list of gradients; it updates the parameters in place. γ and β of batch norm are parameters like any other.


class SGD:
    """Plain stochastic gradient descent: ``p -= lr * g``."""

    def __init__(self, params: list[np.ndarray], lr: float) -> None:
        self.params, self.lr = params, lr

    def step(self, grads: list[np.ndarray]) -> None:
        for p, g in zip(self.params, grads):
            p -= self.lr * g


class Momentum:
    """SGD with (heavy-ball) momentum: ``v = mu * v + g; p -= lr * v``."""

    def __init__(self, params: list[np.ndarray], lr: float, mu: float = 0.9) -> None:
        self.params, self.lr, self.mu = params, lr, mu
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: list[np.ndarray]) -> None:
        for p, g, v in zip(self.params, grads, self.v):
            v *= self.mu
            v += g
            p -= self.lr * v


class RMSprop:
    """RMSprop: divide the step by a running root-mean-square of recent gradients."""

    def __init__(self, params: list[np.ndarray], lr: float, rho: float = 0.9, eps: float = 1e-8) -> None:
        self.params, self.lr, self.rho, self.eps = params, lr, rho, eps
        self.s = [np.zeros_like(p) for p in params]

    def step(self, grads: list[np.ndarray]) -> None:
        for p, g, s in zip(self.params, grads, self.s):
            s *= self.rho
            s += (1 - self.rho) * g * g
            p -= self.lr * g / (np.sqrt(s) + self.eps)


class Adam:
    """Adam (Kingma & Ba, 2015): momentum on the gradient and on its square, both bias-corrected."""

    def __init__(
        self, params: list[np.ndarray], lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8
    ) -> None:
        self.params, self.lr, self.beta1, self.beta2, self.eps = params, lr, beta1, beta2, eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        # Folding both bias corrections into the step size keeps the loop to three in-place updates.
        lr_t = float(self.lr * np.sqrt(1 - self.beta2**self.t) / (1 - self.beta1**self.t))
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g * g
            p -= lr_t * m / (np.sqrt(v) + self.eps)


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "rmsprop": RMSprop, "adam": Adam}
