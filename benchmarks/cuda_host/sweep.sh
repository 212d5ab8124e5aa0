#!/usr/bin/env bash
# The CUDA path's tuning knobs, timed: device microseconds per call (and host microseconds) of the training
# forward, inference and backward on the benchmark's shapes, for each setting of the knobs that the defaults in
# cpp/src/cuda/batchnorm.cu were chosen from. Run by scripts/gpu-check.sh on a GPU:
#   benchmarks/cuda_host/sweep.sh PATH/TO/cuda_host > sweep.txt
set -uo pipefail
bin=${1:?usage: sweep.sh PATH/TO/cuda_host}
shapes=(64,128,3136 64,128,3136,d 256,256,196 128,64,1024 8192,1024,1 200704,128,1 50176,256,1 32,64,64 64,256,1)
run() {
  echo "## $*"
  env "$@" "$bin" "${shapes[@]}"
}
run FASTBN_CUDA_RESIDENT=1
run FASTBN_CUDA_RESIDENT=0
run FASTBN_CUDA_RESIDENT_KB=64
run FASTBN_CUDA_RESIDENT_KB=48
run FASTBN_CUDA_INFER_KB=16
run FASTBN_CUDA_INFER_KB=256
run FASTBN_CUDA_INFER_KB=1024
