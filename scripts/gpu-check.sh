#!/usr/bin/env bash
# The GPU checks in one command, for a machine with an NVIDIA GPU, nvcc, CMake and Python (with PyTorch and,
# optionally, CuPy for the interop tests). Works offline: it builds with the build tools already installed.
#   scripts/gpu-check.sh [WORKDIR]
# 1. builds and installs fastbn with CUDA (for this GPU's architecture only, to build fast) into WORKDIR/site;
# 2. builds the C++ tests (CUDA kernels against the CPU kernels) against that install and runs them;
# 3. runs the Python GPU tests (tests/test_cuda.py) and the PyTorch parity tests;
# 4. runs `python -m fastbn bench --device cuda`, writing WORKDIR/gpu-bench.json.
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

echo "== Python GPU tests and PyTorch parity"
"$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_torch.py || failed+=("pytest")

echo "== benchmark"
"$py" -m fastbn bench --device cuda --repeat 15 --json "$work/gpu-bench.json" || failed+=("bench")

if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu-check: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "gpu-check: all passed"
