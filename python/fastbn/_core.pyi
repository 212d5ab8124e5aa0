"""Type stub of fastbn's compiled module (private: use the fastbn package). Array arguments are NumPy arrays the
Python layer has already laid out as the (outer, channels, inner) view; ptr_* and cuda_* take raw addresses."""

from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

_Array = npt.NDArray[Any]
_OptArray = npt.NDArray[Any] | None

def train(
    x: _Array,
    residual: _OptArray,
    y: _Array,
    gamma: _OptArray,
    beta: _OptArray,
    mean: _Array,
    var: _Array,
    outer: int,
    channels: int,
    inner: int,
    eps: float,
    act: int,
    slope: float,
) -> None: ...
def infer(
    x: _Array,
    residual: _OptArray,
    y: _Array,
    mean: _Array,
    var: _Array,
    gamma: _OptArray,
    beta: _OptArray,
    outer: int,
    channels: int,
    inner: int,
    eps: float,
    act: int,
    slope: float,
    f64_stats: bool,
) -> None: ...
def backward(
    dy: _Array,
    x: _OptArray,
    y: _OptArray,
    mean: _Array,
    var: _Array,
    gamma: _OptArray,
    beta: _OptArray,
    dx: _Array,
    dresidual: _OptArray,
    dgamma: _OptArray,
    dbeta: _OptArray,
    outer: int,
    channels: int,
    inner: int,
    eps: float,
    batch_stats: bool,
    act: int,
    slope: float,
) -> None: ...
def local_stats(x: _Array, mean: _Array, m2: _Array, outer: int, channels: int, inner: int) -> None: ...
def merge_stats(
    count: npt.NDArray[np.float64], mean: npt.NDArray[np.float64], m2: npt.NDArray[np.float64], channels: int
) -> tuple[float, npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...
def update_running_stats(
    running_mean: _Array, running_var: _Array, mean: _Array, var: _Array, count: float, momentum: float
) -> None: ...
def backward_reduce(
    dy: _Array,
    x: _OptArray,
    y: _OptArray,
    mean: _Array,
    var: _Array,
    gamma: _OptArray,
    beta: _OptArray,
    sum_dy: _Array,
    sum_dy_xhat: _Array,
    outer: int,
    channels: int,
    inner: int,
    eps: float,
    act: int,
    slope: float,
) -> None: ...
def backward_apply(
    dy: _Array,
    x: _OptArray,
    y: _OptArray,
    mean: _Array,
    var: _Array,
    gamma: _OptArray,
    beta: _OptArray,
    sum_dy: _Array,
    sum_dy_xhat: _Array,
    count: float,
    dx: _Array,
    dresidual: _OptArray,
    outer: int,
    channels: int,
    inner: int,
    eps: float,
    act: int,
    slope: float,
) -> None: ...
def dtype_code(dtype: np.dtype[Any]) -> int: ...
def ptr_train(
    code: int,
    x: int,
    residual: int,
    y: int,
    gamma: int,
    beta: int,
    mean: int,
    var: int,
    outer: int,
    channels: int,
    inner: int,
    eps: float,
    act: int,
    slope: float,
    running_mean: int = 0,
    running_var: int = 0,
    running: int = 0,
    momentum: float = 0.0,
    tracked: int = 0,
) -> None: ...
def ptr_infer(
    code: int,
    x: int,
    residual: int,
    y: int,
    mean: int,
    var: int,
    gamma: int,
    beta: int,
    outer: int,
    channels: int,
    inner: int,
    eps: float,
    act: int,
    slope: float,
    f64_stats: bool,
) -> None: ...
def ptr_backward(
    code: int,
    dy: int,
    x: int,
    y: int,
    mean: int,
    var: int,
    gamma: int,
    beta: int,
    dx: int,
    dres: int,
    dgamma: int,
    dbeta: int,
    outer: int,
    channels: int,
    inner: int,
    eps: float,
    batch_stats: bool,
    act: int,
    slope: float,
) -> None: ...
def ptr_stats(code: int, x: int, mean: int, m2: int, outer: int, channels: int, inner: int) -> None: ...
def ptr_update_running_stats(
    running: int,
    running_mean: int,
    running_var: int,
    stats: int,
    mean: int,
    var: int,
    channels: int,
    count: float,
    momentum: float,
) -> None: ...
def ptr_backward_reduce(
    code: int,
    dy: int,
    x: int,
    y: int,
    mean: int,
    var: int,
    gamma: int,
    beta: int,
    sum_dy: int,
    sum_dy_xhat: int,
    outer: int,
    channels: int,
    inner: int,
    eps: float,
    act: int,
    slope: float,
) -> None: ...
def ptr_backward_apply(
    code: int,
    dy: int,
    x: int,
    y: int,
    mean: int,
    var: int,
    gamma: int,
    beta: int,
    sum_dy: int,
    sum_dy_xhat: int,
    count: float,
    dx: int,
    dres: int,
    outer: int,
    channels: int,
    inner: int,
    eps: float,
    act: int,
    slope: float,
) -> None: ...
def infer_simple(
    x: object,
    mean: object,
    var: object,
    gamma: object,
    beta: object,
    axis: object,
    eps: object,
    out: object,
    act: int = 0,
    slope: float = 0.0,
    residual: object = None,
) -> _Array | None: ...
def train_simple(
    x: object,
    gamma: object,
    beta: object,
    axis: object,
    eps: object,
    out: object,
    act: int = 0,
    slope: float = 0.0,
    residual: object = None,
) -> tuple[_Array, _Array, _Array] | None: ...
def backward_simple(
    dy: object,
    x: object,
    mean: object,
    var: object,
    gamma: object,
    axis: object,
    eps: object,
    batch_stats: object,
    out: object,
    act: int = 0,
    slope: float = 0.0,
    y: object = None,
    beta: object = None,
    want_dresidual: bool = False,
) -> tuple[_Array, ...] | None: ...
def set_min_bytes_per_thread(bytes: int) -> None: ...
def min_bytes_per_thread() -> int: ...
def reset_min_bytes_per_thread() -> None: ...
def min_bytes_per_thread_now() -> int: ...
def _note_thread_start(delay_ns: int, threads: int, idle_ns: int = 0, runnable: int = -1) -> None: ...
def _runnable_threads() -> int: ...
def _forget_crowding() -> None: ...
def set_stream_min_bytes(bytes: int) -> None: ...
def stream_min_bytes() -> int: ...
def reset_stream_min_bytes() -> None: ...
def cache_keeps_writes() -> bool: ...
def set_core_cache_bytes(bytes: int) -> None: ...
def core_cache_bytes() -> int: ...
def reset_core_cache_bytes() -> None: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def simd() -> str: ...
def simd_supported(name: str) -> bool: ...
def set_simd(name: str) -> None: ...
def simd_warning() -> str: ...
def build_info() -> dict[str, Any]: ...
def empty(shape: list[int] | tuple[int, ...], dtype: np.dtype[Any]) -> _Array: ...
def output_cache_info() -> dict[str, int]: ...
def set_output_cache_limit(bytes: int) -> None: ...
def empty_output_cache() -> None: ...
def stream_copy(src: npt.NDArray[np.float32], dst: npt.NDArray[np.float32]) -> None: ...
def stream_add(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], dst: npt.NDArray[np.float32]) -> None: ...
def stream_read(src: npt.NDArray[np.float32]) -> float: ...
def cuda_is_available() -> bool: ...
def cuda_device_count() -> int: ...
def cuda_device_description(device: int = 0) -> str: ...
def cuda_synchronize(stream: int = 0) -> None: ...
def cuda_train(
    x: int,
    y: int,
    gamma: int,
    beta: int,
    mean: int,
    var: int,
    outer: int,
    channels: int,
    inner: int,
    eps: float,
    f64: bool,
    stream: int,
) -> None: ...
def cuda_infer(
    x: int,
    y: int,
    mean: int,
    var: int,
    gamma: int,
    beta: int,
    outer: int,
    channels: int,
    inner: int,
    eps: float,
    f64: bool,
    stream: int,
) -> None: ...
def cuda_backward(
    dy: int,
    x: int,
    mean: int,
    var: int,
    gamma: int,
    dx: int,
    dgamma: int,
    dbeta: int,
    outer: int,
    channels: int,
    inner: int,
    eps: float,
    batch_stats: bool,
    f64: bool,
    stream: int,
) -> None: ...
def cuda_update_running_stats(
    running_mean: int,
    running_var: int,
    mean: int,
    var: int,
    channels: int,
    count: int,
    factor: float,
    f64: bool,
    stream: int,
) -> None: ...

class DeviceBuffer:
    def __init__(self, nbytes: int) -> None: ...
    @property
    def ptr(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def copy_from_host(self, host: _Array) -> None: ...
    def copy_to_host(self, host: _Array) -> None: ...
    def copy_from_device(self, src: int) -> None: ...
