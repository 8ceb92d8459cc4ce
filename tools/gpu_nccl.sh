# Sourced by tools/gpu_session.sh and tools/gpu_tune_gemm.sh: sets the array nccl_args to the make
# variables that point the build at an NCCL — none when the CUDA toolkit has nccl.h, else the copy
# the PyTorch wheel brings (nvidia-nccl-cu13, as on the lent GPU machines).
nccl_args=()
cuda_home=""   # the Makefile's rule: /usr/local/cuda-13.0, /usr/local/cuda, or the nvcc on PATH
for d in /usr/local/cuda-13.0 /usr/local/cuda "$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /x/x)")")"; do
  [ -x "$d/bin/nvcc" ] && { cuda_home=$d; break; }
done
if [ ! -f "${cuda_home:-/nonexistent}/include/nccl.h" ]; then
  wheel=$(python3 -c 'import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null)
  if [ -n "$wheel" ] && [ -f "$wheel/include/nccl.h" ]; then
    nccl_args=(NCCL_HOME="$wheel" NCCL_LIB=-l:libnccl.so.2)
    echo "nccl: $wheel (pip wheel)"
  else
    echo "nccl: not found; the EP test will not build"
  fi
fi
