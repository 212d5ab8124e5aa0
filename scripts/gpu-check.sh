#!/usr/bin/env bash
# The GPU checks in one command, for a machine with an NVIDIA GPU, nvcc, CMake and Python (with PyTorch and,
# optionally, CuPy for the interop tests). Works offline: it builds with the build tools already installed.
#   scripts/gpu-check.sh [WORKDIR]
# 1. builds and installs fastbn with CUDA (for this GPU's architecture only, to build fast) into WORKDIR/site;
# 2. builds the C++ tests (CUDA kernels against the CPU kernels) against that install and runs them;
# 3. runs the Python GPU tests (tests/test_cuda.py: DeviceArray, CuPy, PyTorch CUDA tensors, fastbn.torch);
# 4. times the host cost of one call from C++ (benchmarks/cuda_host), on the resident and the staged path, and
#    the per-call time of small tensors from Python (benchmarks/cuda_overhead.py);
# 5. runs `python -m fastbn bench --device cuda` on both paths, writing WORKDIR/gpu-bench.json and
#    WORKDIR/gpu-bench-staged.json (FASTBN_CUDA_RESIDENT=0). REPEAT (default 15) sets its samples; SWEEP=1
#    also times the tuning knobs (benchmarks/cuda_host/sweep.sh) into WORKDIR/sweep.txt;
# 6. times a ResNet-18 training step and eval forward on the GPU, stock against fastbn.torch.convert(model)
#    (benchmarks/resnet.py --device cuda, batch 16 at 160² with the layer table, and batch 64 at 224²), writing
#    WORKDIR/resnet-gpu.txt and WORKDIR/resnet-gpu-b64.txt; RESNET=0 skips this step (to fit a short lease).
# Every step runs even when an earlier check fails (the build excepted); the exit code says whether all passed.
set -uo pipefail
cd "$(dirname "$0")/.."
work=$(realpath -m "${1:-gpu-check-out}")
mkdir -p "$work"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
failed=()
# CMake and Ninja from PATH, else from the Python packages of the same names.
cmake_bin=$(command -v cmake || "$py" -c "import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, 'cmake'))")
ctest_bin="$(dirname "$cmake_bin")/ctest"
gen=()
if command -v ninja >/dev/null || "$py" -c "import ninja" 2>/dev/null; then
  export PATH="$PATH:$("$py" -c "import ninja, os; print(os.path.dirname(ninja.__file__) + '/data/bin')" 2>/dev/null)"
  gen=(-G Ninja)
fi

nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d '.')
nvcc --version | tail -n1
"$py" -c "import numpy, pybind11, scikit_build_core, torch; print('numpy', numpy.__version__, 'pybind11', \
pybind11.__version__, 'torch', torch.__version__, 'cudnn', torch.backends.cudnn.version())"

echo "== build for sm_${arch}"
site="$work/site"
rm -rf "$site"
if ! "$py" -m pip install --no-build-isolation --no-deps --no-index --quiet --target "$site" \
    -Ccmake.define.FASTBN_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$arch" -Cbuild-dir="$work/build" .; then
  echo "gpu-check: the build failed" >&2
  exit 1
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c "import fastbn; print(fastbn.build_info()); print(fastbn.cuda.device_description(0))"

echo "== C++ tests against the installed package"
if ! { "$cmake_bin" -S tests/cpp -B "$work/cpp-tests" "${gen[@]}" -Dfastbn_DIR="$("$py" -m fastbn --cmake-dir)" \
         >/dev/null && "$cmake_bin" --build "$work/cpp-tests" >/dev/null &&
       "$ctest_bin" --test-dir "$work/cpp-tests" --output-on-failure; }; then
  failed+=("C++ tests")
fi

echo "== Python GPU tests"
"$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py || failed+=("pytest")

echo "== host cost per call (C++)"
if "$cmake_bin" -S benchmarks/cuda_host -B "$work/cuda-host" "${gen[@]}" -Dfastbn_DIR="$("$py" -m fastbn --cmake-dir)" \
     -DCMAKE_CUDA_ARCHITECTURES="$arch" >/dev/null && "$cmake_bin" --build "$work/cuda-host" >/dev/null; then
  echo "-- resident path"
  "$work/cuda-host/cuda_host" | tee "$work/cuda-host.txt" || failed+=("host bench")
  echo "-- staged path (FASTBN_CUDA_RESIDENT=0)"
  FASTBN_CUDA_RESIDENT=0 "$work/cuda-host/cuda_host" | tee "$work/cuda-host-staged.txt" || failed+=("host bench")
  if [ -n "${SWEEP:-}" ]; then
    echo "-- tuning knobs (benchmarks/cuda_host/sweep.sh) into $work/sweep.txt"
    benchmarks/cuda_host/sweep.sh "$work/cuda-host/cuda_host" >"$work/sweep.txt" || failed+=("sweep")
  fi
else
  failed+=("host bench build")
fi

echo "== per-call time from Python (benchmarks/cuda_overhead.py)"
"$py" benchmarks/cuda_overhead.py | tee "$work/cuda-overhead.txt" || failed+=("overhead bench")

echo "== benchmark"
repeat=${REPEAT:-15}
FASTBN_CUDA_RESIDENT=0 "$py" -m fastbn bench --device cuda --repeat "$repeat" \
  --json "$work/gpu-bench-staged.json" >"$work/gpu-bench-staged.txt" || failed+=("bench (staged)")
"$py" -m fastbn bench --device cuda --repeat "$repeat" --json "$work/gpu-bench.json" || failed+=("bench")

if [ "${RESNET:-1}" != 0 ]; then
  echo "== ResNet-18 on the GPU (benchmarks/resnet.py --device cuda)"
  "$py" benchmarks/resnet.py --device cuda --repeat "$repeat" --layers | tee "$work/resnet-gpu.txt" || failed+=("resnet")
  "$py" benchmarks/resnet.py --device cuda --repeat "$repeat" --batch 64 --size 224 | tee "$work/resnet-gpu-b64.txt" ||
    failed+=("resnet b64")
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu-check: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "gpu-check: all passed"
