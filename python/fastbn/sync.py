"""SyncBatchNorm: batch statistics of a batch split over processes (data-parallel training).

Every process holds part of the batch; :class:`SyncBatchNorm` normalizes each part with the statistics of the
whole batch. Only per-channel vectors travel: forward, one allgather of 2C + 2 doubles per process (an ok
flag, the count, the means and the M2s, merged on every process in rank order with Chan's formula, so the
statistics are the same bits everywhere); backward, one allreduce-sum of 2C + 1 doubles (an ok flag, the sums
of dz and dz * xhat). The transport is an existing engine: an mpi4py communicator, or any object following
:class:`Communicator`.

Forward and backward are collectives: every process calls them, in the same order, also a process whose part
is empty (it gets an empty output). Bad input on one process raises on every process (the others get a
ValueError naming it) and changes nothing anywhere; a process that does not call at all (it crashed, or took
another code path) leaves the others waiting, as with any collective.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from . import functional as F
from .batchnorm import BatchNorm

__all__ = ["SyncBatchNorm", "Communicator", "MPICommunicator", "as_communicator"]


@runtime_checkable
class Communicator(Protocol):
    """What SyncBatchNorm needs from a communication engine: the number of processes and two collectives on
    C-contiguous float64 NumPy buffers. Every process calls them with buffers of the same shape, in the same
    order."""

    size: int
    rank: int

    def allgather(self, send: np.ndarray, recv: np.ndarray) -> None:
        """recv[r] = the send buffer of process r, for every r; recv has shape (size, *send.shape)."""

    def allreduce_sum(self, send: np.ndarray, recv: np.ndarray) -> None:
        """recv = the elementwise sum of every process's send buffer (the same bits on every process)."""


class MPICommunicator:
    """:class:`Communicator` over an mpi4py communicator, with its buffer (uppercase, pickle-free) methods."""

    def __init__(self, comm) -> None:
        self.comm = comm
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()

    def allgather(self, send: np.ndarray, recv: np.ndarray) -> None:
        self.comm.Allgather(send, recv)

    def allreduce_sum(self, send: np.ndarray, recv: np.ndarray) -> None:
        from mpi4py import MPI

        self.comm.Allreduce(send, recv, op=MPI.SUM)


def as_communicator(comm) -> Communicator:
    """An mpi4py communicator wrapped as a :class:`Communicator`, or ``comm`` itself if it is one."""
    if all(hasattr(comm, a) for a in ("Allgather", "Allreduce", "Get_size", "Get_rank")):
        return MPICommunicator(comm)
    if isinstance(comm, Communicator):
        return comm
    raise TypeError(
        "fastbn: comm must be an mpi4py communicator or an object with size, rank, allgather(send, recv) and "
        f"allreduce_sum(send, recv); got {type(comm).__name__}"
    )


class SyncBatchNorm(BatchNorm):
    """:class:`fastbn.BatchNorm` whose batch statistics are those of the batch over all processes of ``comm``.

    Same API, state and semantics as :class:`BatchNorm` (PyTorch's ``SyncBatchNorm`` for the gradients:
    ``grad_gamma``/``grad_beta`` are this process's contributions, which sum over the processes to the
    full-batch gradient, as data-parallel training expects). Eval mode with running statistics does no
    communication; eval with ``track_running_stats=False`` uses the global batch statistics.

    Parameters
    ----------
    comm : mpi4py communicator or :class:`Communicator`
    Other parameters as :class:`BatchNorm` (CPU only).
    """

    def __init__(self, num_features: int, *, comm, **kwargs) -> None:
        if kwargs.get("device", "cpu") != "cpu":
            raise NotImplementedError("fastbn: SyncBatchNorm runs on the CPU; use fastbn.torch.SyncBatchNorm on GPUs")
        self.comm = as_communicator(comm)
        super().__init__(num_features, **kwargs)
        self._synced = False
        self._count = 0.0

    def __repr__(self) -> str:
        return "Sync" + super().__repr__()

    # ------------------------------------------------------------------------------------------------------

    def _gather_ok(self, error: BaseException | None, payload: np.ndarray, reduce: bool) -> np.ndarray:
        """One collective of [ok, *payload]; raises on every process when any process failed its checks."""
        send = np.empty(payload.size + 1, np.float64)
        send[0] = 0.0 if error else 1.0
        send[1:] = 0.0 if error else payload
        if reduce:
            recv = np.empty_like(send)
            self.comm.allreduce_sum(send, recv)
            failed = recv[0] != self.comm.size
            bad = "some"
        else:
            recv = np.empty((self.comm.size, send.size), np.float64)
            self.comm.allgather(send, recv)
            bad_ranks = np.flatnonzero(recv[:, 0] != 1.0).tolist()
            failed = bool(bad_ranks)
            bad = ", ".join(map(str, bad_ranks))
        if error is not None:
            raise error
        if failed:
            raise ValueError(
                f"fastbn: SyncBatchNorm: process(es) {bad} of {self.comm.size} failed their input checks; "
                "this collective call was abandoned on every process and nothing was changed"
            )
        return recv

    def _local_stats(self, a: np.ndarray):
        c = self.num_features
        if a.size == 0:
            return np.zeros(2 * c + 1)
        n, mean, m2 = F.batch_norm_stats(a, axis=self.axis)
        return np.concatenate(([n], mean, m2))

    def forward(self, x, out=None, residual=None):
        """Normalize this process's part of the batch with the whole batch's statistics (a collective in
        training mode, and in eval mode without running statistics); see :meth:`BatchNorm.forward`."""
        if not self.training and self.track_running_stats:  # running statistics: no communication
            self._synced = False
            a, _ = self._check_input(x)
            if a.size == 0:  # this process's part of the batch is empty
                self._saved = (a, None, None, None, False, False, residual is not None)
                return np.empty_like(a) if out is None else out
            return super().forward(x, out=out, residual=residual)
        c = self.num_features
        error, payload = None, None
        try:
            a, shape = self._check_input(x)
            if len(shape) < 2:
                raise ValueError(f"fastbn: expected x with at least 2 dimensions (batch, channels, ...), got {shape}")
            if residual is not None:
                if self.inplace:
                    raise ValueError("fastbn: inplace=True cannot recover xhat when a residual is added")
                residual, _ = self._check_input(residual, "residual")
                if residual.shape != a.shape:
                    raise ValueError(f"fastbn: residual has shape {residual.shape}, but x has shape {a.shape}")
            payload = self._local_stats(a)
        except (TypeError, ValueError) as e:
            error = e
        parts = self._gather_ok(error, payload if payload is not None else np.zeros(2 * c + 1), reduce=False)
        count, mean, m2 = F.batch_norm_merge_stats(parts[:, 1], parts[:, 2 : 2 + c], parts[:, 2 + c :])
        if count <= 1:
            raise ValueError(
                "fastbn: expected more than 1 value per channel when training, got "
                f"{int(count)} over all {self.comm.size} processes"
            )
        var = m2 / count
        if a.size == 0:
            y = np.empty_like(a) if out is None else out
        else:
            if self.inplace:
                out = a
            y = F.batch_norm_apply(
                a, mean, var, self.gamma, self.beta, axis=self.axis, eps=self.eps, out=out,
                activation=self.activation, negative_slope=self.negative_slope, residual=residual,
            )  # fmt: skip
        if self.training and self.track_running_stats:
            self._update_running_stats(mean, var, count)
        keep_y = self.activation is not None or self.inplace
        overwritten = not self.inplace and out is not None and a.size and np.may_share_memory(out, a)
        self._saved = (None if self.inplace else a, y if keep_y else None, mean, var, True, overwritten,
                       residual is not None)  # fmt: skip
        self._synced, self._count = True, count
        return y

    __call__ = forward

    def backward(self, dy, out=None):
        """Gradient with respect to this process's part of the input (a collective when the forward was); sets
        grad_gamma and grad_beta to this process's contributions. See :meth:`BatchNorm.backward`."""
        if self._saved is None:
            raise RuntimeError("fastbn: backward() called before any forward()")
        if not self._synced:  # the forward used the running statistics: local, as BatchNorm
            x = self._saved[0]
            if x is not None and x.size == 0:
                dx = np.empty_like(x) if out is None else out
                if self.affine:
                    self.grad_gamma[...] = 0
                    self.grad_beta[...] = 0
                return (dx, np.empty_like(x)) if self._saved[6] else dx
            return super().backward(dy, out=out)
        x, y, mean, var, _, overwritten, had_residual = self._saved
        count = self._count
        if overwritten:
            raise RuntimeError(
                "fastbn: backward() needs the input of the last forward(), but forward(x, out=...) wrote over it"
            )
        c = self.num_features
        ref = y if x is None else x
        fused = {"activation": self.activation, "negative_slope": self.negative_slope, "y": y}
        error, sums = None, np.zeros(2 * c)
        try:
            d = F._as_array(dy, "dy", self.dtype) if not isinstance(dy, np.ndarray) else dy
            if d.shape != ref.shape:
                raise ValueError(f"fastbn: dy has shape {d.shape}, but x has shape {ref.shape}; they must match")
            if ref.size:
                sd, sx = F.batch_norm_backward_reduce(
                    d, x, mean, var, self.gamma, self.beta, axis=self.axis, eps=self.eps, **fused
                )
                sums = np.concatenate((sd, sx))
        except (TypeError, ValueError) as e:
            error = e
        total = self._gather_ok(error, sums, reduce=True)[1:]
        if self.affine:
            self.grad_beta[...] = sums[:c]
            self.grad_gamma[...] = sums[c:]
        dres = None
        if ref.size == 0:
            dx = np.empty_like(ref) if out is None else out
            dres = np.empty_like(ref) if had_residual else None
        else:
            r = F.batch_norm_backward_apply(
                d, x, mean, var, self.gamma, self.beta, total[:c], total[c:], count, axis=self.axis, eps=self.eps,
                out=out, return_dresidual=had_residual, **fused,
            )  # fmt: skip
            dx, dres = r if had_residual else (r, None)
        return (dx, dres) if had_residual else dx
