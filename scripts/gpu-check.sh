#!/usr/bin/env bash
# The GPU checks in one command, for a machine with an NVIDIA GPU, nvcc, CMake and Python (with PyTorch and,
# optionally, CuPy for the interop tests). Works offline: it builds with the build tools already installed.
#   scripts/gpu-check.sh [OUTDIR]
# 1. builds and installs fastbn with CUDA (for this GPU's architecture only, to build fast) into OUTDIR/site;
# 2. builds the C++ tests (CUDA kernels against the CPU kernels) against that install and runs them;
# 3. runs the Python GPU tests (tests/test_cuda.py);
# 4. runs `python -m fastbn bench --device cuda`, writing OUTDIR/gpu-bench.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-gpu-check-out}")
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d '.')
echo "gpu-check: building for sm_${arch}"
"$py" -c "import numpy, pybind11, scikit_build_core; print('numpy', numpy.__version__, 'pybind11', pybind11.__version__)"

site="$out/site"
rm -rf "$site"
"$py" -m pip install --no-build-isolation --no-deps --no-index --quiet --target "$site" \
  -Ccmake.define.FASTBN_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$arch" -Cbuild-dir="$out/build" .
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
"$py" -m fastbn info

echo "gpu-check: C++ tests against the installed package"
cmake -S tests/cpp -B "$out/cpp-tests" -G Ninja -Dfastbn_DIR="$("$py" -m fastbn --cmake-dir)" >/dev/null
cmake --build "$out/cpp-tests" >/dev/null
ctest --test-dir "$out/cpp-tests" --output-on-failure

echo "gpu-check: Python GPU tests"
"$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py

echo "gpu-check: benchmark"
"$py" -m fastbn bench --device cuda --repeat 15 --json "$out/gpu-bench.json"
