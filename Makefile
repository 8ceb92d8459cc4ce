# dsv3.c — the only build entry.
#
#   make run        build and run the demo on the bundled model (installs missing Debian packages)
#   make test       build and run every CPU test (cmocka, and tests/js with node); GPU tests skip without a GPU
#   make test-soak  the 10,000-request soak of dsv3 serve
#   make bench-serve  dsv3 serve against generate --batch (tokens/s, TTFT, inter-token latency)
#   make check-layers  includes point down the layers of ref/ only (part of make test)
#   make check-citations  every docs/X.md §N cited in the tree exists (part of make test)
#   make test-asan  the same tests under AddressSanitizer + UndefinedBehaviorSanitizer
#   make bench      CPU benchmarks (ratios against baselines measured in the same run)
#   make docs       Doxygen HTML into build/docs (warnings are errors)
#   make pipeline-figures  the schedule timelines of docs/pipeline.md (dsv3 pipeline --png; installs gnuplot)
#   make test-gpu / bench-gpu   CUDA tests and benchmarks (need nvcc; skip cleanly without a GPU)
#   make sanitize-gpu           compute-sanitizer (memcheck, racecheck, synccheck, initcheck) over the GPU test
#   make cuda                   compile the CUDA library, GPU test and benchmark only
#   make test-gpu-mock          the GPU test against a host emulation of the kernels (no GPU needed)
#   make clean
#
# Variables: OPT (default -O3); PORTABLE=1 builds for any x86-64 CPU into build/portable (default:
#            -march=native, the local CPU's vector units, like llama.cpp's GGML_NATIVE); OMP=0 builds
#            without OpenMP (default on: the parallel loops use threads_set()'s count, see
#            ref/base/threads.h; the code stays plain single-threaded C without it);
#            BENCH_MODEL=DIR: the checkpoint `make bench` measures (default: the mini preset);
#            CUDA_HOME (default /usr/local/cuda-13.0, else /usr/local/cuda, else nvcc's on PATH) — the fast/
#            backend is built when $(CUDA_HOME)/bin/nvcc exists.

SHELL := /bin/bash
CC ?= gcc
ifeq ($(origin CC),default)
CC := gcc
endif

# Debian packages the build needs (checked, and installed when missing, by `make deps`).
DEB_PACKAGES := gcc make libc6-dev libcmocka-dev libcjson-dev libpcre2-dev libonig-dev libmicrohttpd-dev libedit-dev pkg-config

WARN    := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter -Wno-unknown-pragmas
ifneq ($(findstring clang,$(CC)),clang)
WARN    += -Wno-format-truncation
endif
CSTD    := -std=c11 -D_POSIX_C_SOURCE=200809L
OPT     ?= -O3
# PORTABLE=1: no -march=native, for a binary that runs on any x86-64 (its own build tree).
PORTABLE ?= 0
ifeq ($(PORTABLE),1)
ARCH_FLAGS :=
BUILD   := build/portable
else
ARCH_FLAGS := -march=native
endif
# -ffp-contract=off: a·b + c stays a rounded product and a rounded sum (no fused multiply-add), so
# results are the same on every CPU and compiler, with or without -march=native (clang's default
# is "on"). No -ffast-math: the reference's FP32 sums run in the order the code states.
CFLAGS  := $(CSTD) $(OPT) $(ARCH_FLAGS) -ffp-contract=off -g $(WARN) -Iref -Ifast -MMD -MP
LDLIBS  := -lcjson -lpcre2-8 -lonig -lmicrohttpd -ledit -lm -pthread
# MPI=1: launch under mpirun with MPI_Bcast for the NCCL id (Debian openmpi: libopenmpi-dev, openmpi-bin).
MPI ?= 0
ifeq ($(MPI),1)
MPI_CFLAGS := -DDSV3_WITH_MPI $(shell mpicc --showme:compile 2>/dev/null)
MPI_LIBS := $(shell mpicc --showme:link 2>/dev/null)
CFLAGS  += $(MPI_CFLAGS)
LDLIBS  += $(MPI_LIBS)
endif
# DEB_ROOT: where the Debian packages above were unpacked with `dpkg -x` on a machine that cannot
# install them (the GPU machines; tools/gpu_session.sh does this from carried .deb files).
DEB_ROOT ?=
ifneq ($(DEB_ROOT),)
DEB_LIBDIR := $(DEB_ROOT)/usr/lib/x86_64-linux-gnu
CFLAGS  += -I$(DEB_ROOT)/usr/include
LDLIBS  := -L$(DEB_LIBDIR) -Wl,-rpath,$(abspath $(DEB_LIBDIR)) $(LDLIBS)
endif
OMP ?= 1
ifeq ($(OMP),1)
CFLAGS  += -fopenmp
LDLIBS  += -fopenmp
endif
# The linear kernels (ref/model/linear.c) under GCC: schedule before register allocation, with an
# eye on register pressure, so that a prefill tile's 16 vector accumulators stay in registers and
# every weight load feeds 4 multiply-adds (without it GCC 12 reloads operands: ~2x slower prefill).
ifneq ($(findstring clang,$(CC)),clang)
KERNEL_CFLAGS := -fsched-pressure -fschedule-insns
endif

BUILD   ?= build
REF_SRC := $(filter-out ref/cli/main.c,$(wildcard ref/*.c ref/*/*.c))
REF_OBJ := $(REF_SRC:%.c=$(BUILD)/obj/%.o)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TEST_SUPPORT := $(wildcard tests/util_*.c)
TEST_SUPPORT_OBJ := $(TEST_SUPPORT:%.c=$(BUILD)/obj/%.o)

# ---- CUDA (fast/ + kernels/) ------------------------------------------------------------
# kernels/*.cu and fast/*.cu are compiled by nvcc, fast/*.c by $(CC), into $(BUILD)/libdsv3fast.a,
# only when nvcc exists. The GPU test and benchmark link a private copy of ref/ (built with
# -ffunction-sections and OpenMP, linked with --gc-sections) so they need neither cJSON, PCRE2
# nor cmocka: the GPU machines have CUDA and gcc but none of the Debian packages.
# CUDA_HOME: the first of /usr/local/cuda-13.0, /usr/local/cuda, or the directory of the nvcc on PATH.
CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda-13.0) $(wildcard /usr/local/cuda) \
                         $(patsubst %/bin/nvcc,%,$(shell command -v nvcc 2>/dev/null)))
NVCC := $(CUDA_HOME)/bin/nvcc
HAVE_CUDA := $(shell test -x $(NVCC) && echo 1)
# sm_80: bf16 kernels only (MLA, ops, MoE routing); sm_89: + the FP8 mma.sync GEMM; sm_90a: + WGMMA/TMA.
NVCC_GENCODE ?= -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_89,code=sm_89 \
                -gencode=arch=compute_90a,code=sm_90a
# NVCC_EXTRA: e.g. "-DDSV3_WG_STAGES=6" to build a tuning variant (kernels/fp8_gemm.cu).
NVCC_EXTRA ?=
# GEMM_PERSISTENT=1: FP8_GEMM_WGMMA runs the persistent kernel (kernels/fp8_gemm.cu, Kernel 3; not yet
# run on a GPU, issue 22). Switching it rebuilds only kernels/fp8_gemm.cu (the stamp below).
GEMM_PERSISTENT ?= 0
NVCC_FLAGS := -O3 -std=c++17 --expt-relaxed-constexpr -lineinfo -Werror all-warnings \
              -Xcompiler -Wall,-Wextra,-Wshadow,-Werror -Xptxas -v -Iref -Ifast -Ikernels $(NVCC_GENCODE) $(NVCC_EXTRA) \
              $(if $(filter 1,$(GEMM_PERSISTENT)),-DDSV3_GEMM_PERSISTENT=1)
GPU     := $(BUILD)/gpu
CU_SRC  := $(wildcard kernels/*.cu fast/*.cu)
FAST_C  := $(wildcard fast/*.c)
FAST_OBJ := $(CU_SRC:%.cu=$(GPU)/obj/%.o) $(FAST_C:%.c=$(GPU)/obj/%.o)
# ref/ files that include neither cJSON, PCRE2, Oniguruma, libmicrohttpd nor libedit headers, directly or
# through tokenizer/pretok.h (which includes cJSON) or line_edit.h, nor embed files (incbin): the oracles
# the GPU tests call need none of them
GPU_REF_SRC := $(shell grep -L 'cjson\|pcre2\|oniguruma\|pretok\.h\|microhttpd\|incbin\|histedit\|line_edit' $(REF_SRC))
GPU_REF_OBJ := $(GPU_REF_SRC:%.c=$(GPU)/obj/%.o)
# NCCL: CUDA_HOME's by default; NCCL_HOME=<dir with include/ and lib/> NCCL_LIB=-l:libnccl.so.2 for a pip wheel's copy.
NCCL_HOME ?= $(CUDA_HOME)
NCCL_LIB ?= -lnccl
# fast/ep_nccl.c opens NCCL with dlopen at run time (dsv3 runs without it): this copy is its last resort.
NCCL_SO := $(firstword $(wildcard $(NCCL_HOME)/lib64/libnccl.so.2 $(NCCL_HOME)/lib/libnccl.so.2) $(NCCL_HOME)/lib64/libnccl.so.2)
GPU_CFLAGS := $(CSTD) -O2 -g $(WARN) -Iref -Ifast -Itests/gpu -I$(CUDA_HOME)/include -I$(NCCL_HOME)/include -MMD -MP \
              -DDSV3_NCCL_DEFAULT='"$(NCCL_SO)"' \
              -ffunction-sections -fdata-sections -fopenmp $(if $(DEB_ROOT),-I$(DEB_ROOT)/usr/include) $(MPI_CFLAGS)
GPU_LDFLAGS := -Xlinker --gc-sections -Xcompiler -fopenmp -lm $(MPI_LIBS)
GPU_TEST_SUPPORT := $(GPU)/obj/tests/gpu/gpu_util.o $(GPU)/obj/tests/gpu/gpu_fill.o
GPU_TEST_BIN := $(BUILD)/tests/test_gpu_kernels
# test_gpu_kernels: main and the group registry (test_kernels.c), one file per kernel group
GPU_KERNEL_TEST_OBJ := $(patsubst %.c,$(GPU)/obj/%.o,$(wildcard tests/gpu/test_kernels*.c))
FAST_MODEL_TEST_BIN := $(BUILD)/tests/test_fast_model
FAST_MODEL_BENCH_BIN := $(BUILD)/bench/bench_fast_model
GPU_BENCH_BIN := $(BUILD)/bench/bench_gpu_kernels
COMPUTE_SANITIZER ?= $(firstword $(wildcard $(CUDA_HOME)/bin/compute-sanitizer) $(shell command -v compute-sanitizer 2>/dev/null))

.SECONDARY:
.PHONY: all run test check-layers check-citations test-js test-soak bench-serve test-asan bench docs clean deps pipeline-figures gpu-debs test-mpi test-gpu bench-gpu sanitize-gpu test-gpu-mock bench-gpu-model cuda fuzz notebooks bad-inputs data experiments experiments-fp8
all: $(BUILD)/dsv3

# ---- Debian packages ------------------------------------------------------------------
# One recipe for each stamp; DEB_NEED says which packages it checks (the notebooks also plot).
NOTEBOOK_DEB_PACKAGES := gnuplot-nox
$(BUILD)/.deps-ok: DEB_NEED = $(DEB_PACKAGES)
$(BUILD)/.deps-notebooks-ok: DEB_NEED = $(NOTEBOOK_DEB_PACKAGES)
$(BUILD)/.deps-ok $(BUILD)/.deps-notebooks-ok: Makefile
	@mkdir -p $(BUILD)
	@if [ -n "$(DEB_ROOT)" ]; then echo "dsv3: DEB_ROOT=$(DEB_ROOT): using the Debian packages unpacked there"; touch $@; exit 0; fi; \
	missing=""; for p in $(DEB_NEED); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "dsv3: installing missing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends $$missing || \
	    { echo "dsv3: apt-get failed; install these packages by hand:$$missing"; exit 1; }; \
	else echo "dsv3: Debian packages present: $(DEB_NEED)"; fi
	@touch $@
deps: $(BUILD)/.deps-ok

# The runtime/header packages as .deb files, for a machine that has gcc and CUDA but cannot install
# Debian packages (the GPU machines): carry build/debs there, unpack with `dpkg -x` and build with
# DEB_ROOT=<dir> (tools/gpu_session.sh model does both).
GPU_DEBS := libcjson1 libcjson-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libpcre2-dev libonig5 libonig-dev \
            libmicrohttpd12 libmicrohttpd-dev libedit2 libedit-dev libbsd0 libmd0
gpu-debs:
	@mkdir -p $(BUILD)/debs && cd $(BUILD)/debs && apt-get download $(GPU_DEBS) && ls -1 $(CURDIR)/$(BUILD)/debs

# ---- the library and the binary -------------------------------------------------------
# Objects depend on the compiler and its flags (OPT, PORTABLE, OMP, ...): a change rebuilds them.
$(BUILD)/.cflags: FORCE
	@mkdir -p $(BUILD)
	@echo '$(CC) $(CFLAGS) $(KERNEL_CFLAGS)' | cmp -s - $@ || echo '$(CC) $(CFLAGS) $(KERNEL_CFLAGS)' > $@
FORCE:
.PHONY: FORCE

$(BUILD)/obj/%.o: %.c $(BUILD)/.cflags | $(BUILD)/.deps-ok
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS) -c $< -o $@

# The chat page is assembled into webui.o as it is (.incbin), so the object depends on it.
$(BUILD)/obj/ref/serve/webui.o: ref/serve/chat.html
$(BUILD)/obj/ref/model/linear.o: CFLAGS += $(KERNEL_CFLAGS)

$(BUILD)/libdsv3.a: $(REF_OBJ)
	@rm -f $@
	@ar rcs $@ $^

# With nvcc, dsv3 carries the GPU backend (`--backend fast`): fast/backend_gpu.c's strong symbols
# replace ref/backend_stub.c's weak ones, and the CUDA runtime is linked statically, so the
# binary still runs (and says "no CUDA device") on a machine without a GPU or driver.
ifeq ($(HAVE_CUDA),1)
DSV3_GPU_OBJ := $(BUILD)/gpu/obj/fast/backend_gpu.o
DSV3_GPU_LIBS := $(BUILD)/libdsv3fast.a
DSV3_GPU_LDLIBS := -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lstdc++
endif
$(BUILD)/dsv3: $(BUILD)/obj/ref/cli/main.o $(DSV3_GPU_OBJ) $(BUILD)/libdsv3.a $(DSV3_GPU_LIBS)
	@echo "  LINK    $@"
	@$(CC) -o $@ $^ $(LDLIBS) $(DSV3_GPU_LDLIBS)

# The demo: the reference on the bundled model.
run: $(BUILD)/dsv3
	@$(BUILD)/dsv3 run

# ---- training data: the King James Bible from Debian's bible-kjv (public domain text) -----
# data/kjv.txt (one chapter per paragraph), data/tokenizer (a 4096-id BPE trained on it),
# data/train.bin + data/val.bin (uint32 ids, BOS per chapter), data/MANIFEST (provenance).
DATA_VOCAB ?= 4096
data: data/train.bin
data/kjv.txt: | $(BUILD)/.deps-ok
	@mkdir -p data
	@dpkg-query -W -f='$${Status}' bible-kjv 2>/dev/null | grep -q "ok installed" || { \
	  echo "dsv3: installing Debian packages: bible-kjv bible-kjv-text"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends bible-kjv bible-kjv-text; }
	@bible -l1000000 "gen1:1-rev22:21" | awk 'BEGIN { para = "" } \
	  /^[ ]*$$/ { next } \
	  /^[1-3]? ?[A-Z][A-Za-z ]+ [0-9]+$$/ { if (para != "") print para "\n"; para = ""; next } \
	  { sub(/^ *[0-9]+ /, ""); para = (para == "" ? $$0 : para " " $$0) } \
	  END { if (para != "") print para }' > $@.tmp && mv $@.tmp $@
	@{ echo "corpus: data/kjv.txt, the King James Version (1611) as printed by bible(1)"; \
	   echo "package: $$(dpkg-query -W -f='$${Package} $${Version}' bible-kjv-text) + $$(dpkg-query -W -f='$${Package} $${Version}' bible-kjv)"; \
	   echo "licence: the KJV text is in the public domain (copyright expired); packaging GPL-2+ (see /usr/share/doc/bible-kjv-text/copyright)"; \
	   echo "sha256: $$(sha256sum $@ | cut -d' ' -f1)"; } > data/MANIFEST
	@echo "data: $$(wc -c < $@) bytes of text in $@"
data/tokenizer/tokenizer.json: data/kjv.txt | $(BUILD)/dsv3
	$(BUILD)/dsv3 train-tokenizer --input data/kjv.txt --vocab-size $(DATA_VOCAB) --output data/tokenizer
data/train.bin: data/tokenizer/tokenizer.json | $(BUILD)/dsv3
	$(BUILD)/dsv3 prepare-data --tokenizer data/tokenizer --input data/kjv.txt --train data/train.bin --val data/val.bin

# ---- notebooks: runnable walkthroughs, also run (quietly) by `make test` ----------------
# Each one prints its point, checks its claims (non-zero exit if one does not hold) and may plot
# into $(BUILD)/notebooks/NAME.png with gnuplot, which is installed when missing.
NOTEBOOK_SRC := $(wildcard notebooks-c/*.c)
NOTEBOOK_BIN := $(NOTEBOOK_SRC:notebooks-c/%.c=$(BUILD)/notebooks/%)
$(BUILD)/notebooks/%: $(BUILD)/obj/notebooks-c/%.o $(BUILD)/libdsv3.a | $(BUILD)/.deps-notebooks-ok
	@mkdir -p $(dir $@)
	@$(CC) -o $@ $^ $(LDLIBS)

notebooks: $(NOTEBOOK_BIN)
	@for n in $(NOTEBOOK_BIN); do echo "=== $$n"; $$n $(BUILD)/notebooks || exit 1; done

# ---- tests ----------------------------------------------------------------------------
$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(TEST_SUPPORT_OBJ) $(BUILD)/libdsv3.a
	@mkdir -p $(dir $@)
	@$(CC) -o $@ $^ $(LDLIBS) -lcmocka

# Each test binary runs from the repository root; tests that call the CLI use build/dsv3.
# With nvcc present, the CUDA code is compiled too and the GPU test runs in --quick mode
# (it prints SKIP and passes on a machine without a GPU).
ifeq ($(HAVE_CUDA),1)
TEST_GPU_RUN := $(GPU_TEST_BIN) $(BUILD)/tests/test_gpu_ep_nccl $(BUILD)/tests/test_fast_model $(BUILD)/tests/test_fast_model_mock
endif
# Includes point down the layers only (tools/check_layers.sh has the table).
check-layers:
	@bash tools/check_layers.sh

# Every citation of docs/X.md §N resolves to a heading of that file (tools/check_citations.sh).
check-citations:
	@bash tools/check_citations.sh

test: $(BUILD)/dsv3 $(TEST_BIN) $(NOTEBOOK_BIN) $(BUILD)/train_report $(BUILD)/fp8_report $(TEST_GPU_RUN) $(if $(TEST_GPU_RUN),$(GPU_BENCH_BIN) $(BUILD)/tests/dsv3_mock)
	@pass=0; fail=0; failed=""; \
	for c in check-layers check-citations test-js; do \
	  if $(MAKE) --no-print-directory $$c; then pass=$$((pass+1)); else fail=$$((fail+1)); failed="$$failed $$c"; fi; \
	done; \
	for n in $(NOTEBOOK_BIN); do \
	  t0=$$(date +%s%N); \
	  if timeout 300 $$n $(BUILD)/notebooks > $(BUILD)/notebook.log 2>&1; then pass=$$((pass+1)); \
	    echo "notebook $$n: ok ($$(( ($$(date +%s%N) - t0) / 1000000 )) ms)"; \
	  else fail=$$((fail+1)); failed="$$failed $$n"; cat $(BUILD)/notebook.log; fi; \
	done; \
	for t in $(TEST_BIN); do \
	  echo "=== $$t"; \
	  if DSV3_BIN=$(BUILD)/dsv3 $$t; then pass=$$((pass+1)); else fail=$$((fail+1)); failed="$$failed $$t"; fi; \
	done; \
	for t in $(TEST_GPU_RUN); do \
	  args="--quick"; case $$t in *test_fast_model_mock) args="--cli $(BUILD)/tests/dsv3_mock";; *test_fast_model) args="--cli $(BUILD)/dsv3";; esac; \
	  echo "=== $$t $$args"; \
	  if $$t $$args; then pass=$$((pass+1)); else fail=$$((fail+1)); failed="$$failed $$t"; fi; \
	done; \
	echo "test binaries: $$pass passed, $$fail failed$$failed"; \
	test $$fail -eq 0

# `dsv3 serve` through the official OpenAI JavaScript client and its chat page in Debian's Chromium
# (tests/js: npm ci installs openai and playwright-core from package-lock.json; node_modules is not committed).
test-js: $(BUILD)/dsv3
	@if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	command -v node >/dev/null && command -v npm >/dev/null || { echo "dsv3: installing Debian packages: nodejs npm"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends nodejs npm; }; \
	test -x /usr/bin/chromium || { echo "dsv3: installing Debian package: chromium"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends chromium; }
	@cd tests/js && { test node_modules/.package-lock.json -nt package-lock.json || npm ci --no-audit --no-fund --loglevel=error; }
	@echo "=== tests/js (node --test): the OpenAI client, the chat page in Chromium"
	@cd tests/js && DSV3_BIN=$(abspath $(BUILD)/dsv3) node --test --test-concurrency=1 openai_client.test.mjs chat_page.test.mjs

# The 10,000-request soak of `dsv3 serve` (make test runs 1000 of them): RSS after it within 10 % of RSS after 100.
test-soak: $(BUILD)/dsv3 $(BUILD)/tests/test_serve
	DSV3_BIN=$(BUILD)/dsv3 $(BUILD)/tests/test_serve --soak 10000

# ASan/UBSan build in its own tree, same tests (CPU only: the CUDA runtime and ASan do not mix).
# clang's -fopenmp needs LLVM's OpenMP runtime (Debian: libomp-14-dev): the ASan tree's package check
# (its own build/asan/.deps-ok) installs it and clang with the others when missing.
ASAN_DEB_PACKAGES := clang libomp-14-dev
test-asan:
	@$(MAKE) --no-print-directory BUILD=build/asan CC=clang HAVE_CUDA= DEB_PACKAGES="$(DEB_PACKAGES) $(ASAN_DEB_PACKAGES)" OPT="-O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all" \
	  LDLIBS="-lcjson -lpcre2-8 -lonig -lmicrohttpd -ledit -lm -pthread -fsanitize=address,undefined $(if $(filter 1,$(OMP)),-fopenmp)" test

# The mpirun launch path in an MPI build of its own tree (CPU only; needs libopenmpi-dev + openmpi-bin).
MPI_RANKS ?= 3
test-mpi:
	@command -v mpicc >/dev/null && command -v mpirun >/dev/null || { \
	  echo "dsv3: installing Debian packages: libopenmpi-dev openmpi-bin"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get install -y --no-install-recommends libopenmpi-dev openmpi-bin; }
	@$(MAKE) --no-print-directory BUILD=build/mpi MPI=1 HAVE_CUDA= build/mpi/tests/test_bootstrap build/mpi/tests/mpi_bootstrap
	@build/mpi/tests/test_bootstrap
	@mpirun --allow-run-as-root --oversubscribe -n $(MPI_RANKS) build/mpi/tests/mpi_bootstrap
$(BUILD)/tests/mpi_bootstrap: $(BUILD)/obj/tests/mpi_bootstrap.o $(BUILD)/libdsv3.a
	@mkdir -p $(dir $@)
	@$(CC) -o $@ $^ $(LDLIBS)

# ---- docs -----------------------------------------------------------------------------
docs:
	@command -v doxygen >/dev/null || { if [ "$$(id -u)" = 0 ]; then apt-get install -y --no-install-recommends doxygen graphviz; else sudo apt-get install -y doxygen graphviz; fi; }
	@mkdir -p $(BUILD)/docs
	@doxygen docs/Doxyfile 2> $(BUILD)/docs/warnings.log; \
	  if [ -s $(BUILD)/docs/warnings.log ]; then cat $(BUILD)/docs/warnings.log; echo "doxygen: warnings above"; exit 1; fi
	@echo "docs: $(BUILD)/docs/html/index.html"

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj $(BUILD)/fuzz/obj -name '*.d' 2>/dev/null)

# ---- benchmarks -------------------------------------------------------------------------
BENCH_SRC := $(filter-out tests/bench_serve.c,$(wildcard tests/bench_*.c))
BENCH_BIN := $(BENCH_SRC:tests/%.c=$(BUILD)/bench/%)
$(BUILD)/bench/%: $(BUILD)/obj/tests/%.o $(TEST_SUPPORT_OBJ) $(BUILD)/libdsv3.a
	@mkdir -p $(dir $@)
	@$(CC) -o $@ $^ $(LDLIBS)

# BENCH_MODEL=DIR (command line or environment) points bench_ref at any checkpoint; BENCH_THREADS
# ("1,2") and BENCH_REPS (3) are read by bench_ref. The other benchmarks use their own presets.
bench: $(BUILD)/dsv3 $(BENCH_BIN)
	@for b in $(BENCH_BIN); do echo "=== $$b"; \
	  BENCH_MODEL=$(if $(filter-out file undefined,$(origin BENCH_MODEL)),$(BENCH_MODEL)) DSV3_BIN=$(BUILD)/dsv3 $$b || exit 1; done

# `dsv3 serve` against `generate --batch` on the same prompts at 1, 4 and 16 clients (tests/bench_serve.c), on the
# bundled model and on a mkckpt --preset mini checkpoint (with the bundled tokenizer's 4096 ids).
BENCH_SERVE_MINI := $(BUILD)/bench-serve-mini
$(BENCH_SERVE_MINI)/config.json: | $(BUILD)/dsv3
	$(BUILD)/dsv3 mkckpt -o $(BENCH_SERVE_MINI) --preset mini --set vocab_size=4096
	cp models/kjv/tokenizer.json models/kjv/tokenizer_config.json $(BENCH_SERVE_MINI)/
bench-serve: $(BUILD)/dsv3 $(BUILD)/bench/bench_serve $(BENCH_SERVE_MINI)/config.json
	@DSV3_BIN=$(BUILD)/dsv3 $(BUILD)/bench/bench_serve --model models/kjv --label kjv
	@DSV3_BIN=$(BUILD)/dsv3 $(BUILD)/bench/bench_serve --model $(BENCH_SERVE_MINI) --label mini

# Regenerates the committed corpus of malformed checkpoints under tests/bad/.
bad-inputs: $(BUILD)/tests/test_bad_inputs
	$(BUILD)/tests/test_bad_inputs --regen

# Coverage-guided fuzzing with libFuzzer (clang, ASan+UBSan): one target per parser of outside input
# (tests/fuzz/fuzz_*.c, results in docs/robustness.md). FUZZ_SECONDS per target; FUZZ_TARGETS runs a
# subset (make fuzz FUZZ_TARGETS="chat ids"); each target's corpus grows in build/fuzz/corpus-NAME.
FUZZ_SECONDS ?= 60
FUZZ := $(BUILD)/fuzz
FUZZ_ALL := safetensors config tokenizer tokenizer_config chat ids index train_state serve
FUZZ_TARGETS ?= $(FUZZ_ALL)
FUZZ_CFLAGS := $(CSTD) -O1 -g -Iref -Itests/fuzz -fsanitize=fuzzer-no-link,address,undefined -MMD -MP
FUZZ_OBJ := $(REF_SRC:%.c=$(FUZZ)/obj/%.o)
$(FUZZ)/obj/%.o: %.c | $(BUILD)/.deps-ok
	@mkdir -p $(dir $@)
	@echo "  CC      $< (fuzz)"
	@clang $(FUZZ_CFLAGS) -c $< -o $@
$(FUZZ)/libdsv3fuzz.a: $(FUZZ_OBJ)
	@rm -f $@
	@ar rcs $@ $^
$(FUZZ)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_util.h $(FUZZ)/libdsv3fuzz.a
	@echo "  LINK    $@"
	@clang $(FUZZ_CFLAGS) -fsanitize=fuzzer $< $(FUZZ)/libdsv3fuzz.a -lcjson -lpcre2-8 -lonig -lmicrohttpd -ledit -lm -pthread -o $@
# Seeds: the golden files, a small trained tokenizer, a small training checkpoint, hand-written lists.
FUZZ_TRAIN_SET := --preset tiny --vocab 16 --set hidden_size=16 --set num_attention_heads=1 --set q_lora_rank=8 \
  --set kv_lora_rank=8 --set qk_nope_head_dim=8 --set qk_rope_head_dim=4 --set v_head_dim=8 --set intermediate_size=16 \
  --set moe_intermediate_size=8 --set num_hidden_layers=2 --set n_routed_experts=2 --set n_shared_experts=1 \
  --set num_experts_per_tok=1 --set n_group=1 --set topk_group=1 --mtp 0
$(FUZZ)/.corpus: $(BUILD)/dsv3 tests/fuzz/fuzz_util.h
	@mkdir -p $(addprefix $(FUZZ)/corpus-,$(FUZZ_ALL)) $(FUZZ)/seed
	@cp golden/official-tiny/config.json $(FUZZ)/corpus-config/tiny.json; cp golden/fp8-small/config.json $(FUZZ)/corpus-config/small.json
	@head -c 40000 golden/official-tiny/model.safetensors > $(FUZZ)/corpus-safetensors/tiny-head
	@for f in tests/bad/*/model.safetensors; do cp $$f $(FUZZ)/corpus-safetensors/$$(basename $$(dirname $$f)); done
	@head -c 20000 README.md > $(FUZZ)/seed/text.txt
	@$(BUILD)/dsv3 train-tokenizer --input $(FUZZ)/seed/text.txt --vocab-size 300 --output $(FUZZ)/seed/tokenizer >/dev/null
	@cp $(FUZZ)/seed/tokenizer/tokenizer.json $(FUZZ)/corpus-tokenizer/small.json
	@cp $(FUZZ)/seed/tokenizer/tokenizer_config.json $(FUZZ)/corpus-tokenizer_config/small.json
	@cp golden/tokenizer/deepseek-v3/tokenizer_config.json $(FUZZ)/corpus-tokenizer_config/deepseek.json
	@printf '[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi \\u00e9"},{"role":"assistant","content":"Hello"}]' > $(FUZZ)/corpus-chat/three.json
	@printf '[{"role":"user","content":"a\\nb"}]' > $(FUZZ)/corpus-chat/one.json
	@printf '1,2,3' > $(FUZZ)/corpus-ids/plain; printf '[19923, 14, 2058]\n' > $(FUZZ)/corpus-ids/brackets
	@printf '{"metadata":{"total_size":36},"weight_map":{"model.a":"model-00001-of-00002.safetensors","model.b":"model-00001-of-00002.safetensors","model.c":"model-00002-of-00002.safetensors"}}' > $(FUZZ)/corpus-index/valid.json
	@head -c 4096 /dev/zero > $(FUZZ)/seed/ids.bin
	@rm -rf $(FUZZ)/seed/run
	@$(BUILD)/dsv3 train --train $(FUZZ)/seed/ids.bin $(FUZZ_TRAIN_SET) -n 2 -b 1 -T 8 -o $(FUZZ)/seed/run >/dev/null 2>&1
	@cp $(FUZZ)/seed/run/latest/optimizer.safetensors $(FUZZ)/corpus-train_state/step2.safetensors
	@printf '\000{"messages": [{"role": "user", "content": "hi"}], "stop": ["a b", "x"], "logit_bias": {"5": -1}, "max_tokens": 3}' > $(FUZZ)/corpus-serve/chat
	@printf '\001{"prompt": [0, 5, 9], "logprobs": 2, "stop": "in the", "seed": 7, "stream": true, "stream_options": {"include_usage": true}}' > $(FUZZ)/corpus-serve/completion
	@printf '\002{"content": "In the beginning", "add_special": true, "with_pieces": true}' > $(FUZZ)/corpus-serve/tokenize
	@printf '\003{"tokens": [0, 1, 2]}' > $(FUZZ)/corpus-serve/detokenize
	@touch $@
fuzz: $(FUZZ_TARGETS:%=$(FUZZ)/fuzz_%) $(FUZZ)/.corpus
	@for t in $(FUZZ_TARGETS); do \
	  echo "=== fuzz_$$t ($(FUZZ_SECONDS) s)"; \
	  DSV3_FUZZ_TOKENIZER=$(FUZZ)/seed/tokenizer/tokenizer.json DSV3_FUZZ_CKPT=$(FUZZ)/seed/run/latest \
	  $(FUZZ)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -print_final_stats=1 -artifact_prefix=$(FUZZ)/crash-$$t- $(FUZZ)/corpus-$$t \
	    > $(FUZZ)/$$t.log 2>&1 || { tail -40 $(FUZZ)/$$t.log; echo "fuzz_$$t: FAILED (log: $(FUZZ)/$$t.log)"; exit 1; }; \
	  grep -E "DONE|stat::number_of_executed_units" $(FUZZ)/$$t.log; \
	done

# ---- training experiments (docs/experiments.md): load balancing arms and MTP on/off ------
# Same model (models/kjv-config.json), data, seed and steps; only gamma / alpha / lambda differ.
EXP_STEPS ?= 250
EXP_ARGS = --train data/train.bin --val data/val.bin --config models/kjv-config.json -n $(EXP_STEPS) -b 8 -T 256 \
  --lr 1.5e-3 --lr-min 1e-4 --warmup 20 --shuffle --val-every 25 --val-batches 8 --seed 7
$(BUILD)/train_report: tools/train_report.c $(BUILD)/libdsv3.a
	@$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)
experiments: data $(BUILD)/dsv3 $(BUILD)/train_report
	@mkdir -p runs/exp docs/img
	$(BUILD)/dsv3 train $(EXP_ARGS) --bias-update 0.001 --balance-alpha 0 --mtp-lambda 0.3 -o runs/exp/bias --log runs/exp/bias.jsonl
	$(BUILD)/dsv3 train $(EXP_ARGS) --bias-update 0 --balance-alpha 0.01 --mtp-lambda 0.3 -o runs/exp/auxloss --log runs/exp/auxloss.jsonl
	$(BUILD)/dsv3 train $(EXP_ARGS) --bias-update 0 --balance-alpha 0 --mtp-lambda 0.3 -o runs/exp/none --log runs/exp/none.jsonl
	$(BUILD)/dsv3 train $(EXP_ARGS) --bias-update 0.001 --balance-alpha 0 --mtp-lambda 0 -o runs/exp/nomtp --log runs/exp/nomtp.jsonl
	$(BUILD)/dsv3 train $(EXP_ARGS) --bias-update 0.01 --balance-alpha 0 --mtp-lambda 0.3 -o runs/exp/bias10 --log runs/exp/bias10.jsonl
	$(BUILD)/train_report runs/exp bias=runs/exp/bias.jsonl bias10=runs/exp/bias10.jsonl auxloss=runs/exp/auxloss.jsonl \
	  none=runs/exp/none.jsonl nomtp=runs/exp/nomtp.jsonl | tee runs/exp/table.md
	@command -v gnuplot >/dev/null || { if [ "$$(id -u)" = 0 ]; then apt-get install -y --no-install-recommends gnuplot-nox; else sudo apt-get install -y gnuplot-nox; fi; }
	gnuplot -e 'dir="runs/exp"' tools/plot_experiments.gp

# ---- pipeline schedules drawn (docs/pipeline.md): PP 8, 20 micro-batches, the paper's Fig. 5 setting ----
PIPE_FIG_ARGS ?= --pp 8 --micro 20
pipeline-figures: $(BUILD)/dsv3
	@command -v gnuplot >/dev/null || { echo "dsv3: installing Debian package gnuplot-nox"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y --no-install-recommends gnuplot-nox; else sudo apt-get install -y --no-install-recommends gnuplot-nox; fi; }
	@mkdir -p docs/img
	@for s in 1f1b zb1p dualpipe dualpipev; do $(BUILD)/dsv3 pipeline $(PIPE_FIG_ARGS) --schedule $$s --png docs/img/pipeline_$$s.png || exit 1; done
# ---- the FP8 training experiment (docs/experiments.md): FP32 vs the paper's FP8 recipe + 4 ablations ----
# Same model, data, seed and data order; only the numerics differ. Each arm is a file target, so
# `make -j2 experiments-fp8` trains two at a time (single-threaded each), niced for a shared machine.
EXP8_STEPS ?= 100
EXP8_ARGS = --train data/train.bin --val data/val.bin --config models/kjv-config.json -n $(EXP8_STEPS) -b 8 -T 256 \
  --lr 1.5e-3 --lr-min 1e-4 --warmup 10 --shuffle --val-every 10 --val-batches 8 --seed 7
# fp32b: FP32 again from weights 3e-5 larger (--init-std 0.03175 vs 0.0317490): the run-to-run noise floor.
FP8_ARMS := fp32 fp8 tensor nopromote e5m2 moments32 fp32b
runs/fp8/fp32.jsonl: ARM_FLAGS := --precision fp32
runs/fp8/fp8.jsonl: ARM_FLAGS := --precision fp8
runs/fp8/tensor.jsonl: ARM_FLAGS := --precision fp8 --fp8-scaling tensor
runs/fp8/nopromote.jsonl: ARM_FLAGS := --precision fp8 --fp8-promote 0
runs/fp8/e5m2.jsonl: ARM_FLAGS := --precision fp8 --fp8-grad e5m2
runs/fp8/moments32.jsonl: ARM_FLAGS := --precision fp8 --moments fp32
runs/fp8/fp32b.jsonl: ARM_FLAGS := --precision fp32 --init-std 0.03175
runs/fp8/%.jsonl: | data $(BUILD)/dsv3
	@mkdir -p runs/fp8
	@rm -f $@.tmp
	nice $(BUILD)/dsv3 train $(EXP8_ARGS) $(ARM_FLAGS) -o runs/fp8/$* --log $@.tmp > runs/fp8/$*.out 2>&1
	@mv $@.tmp $@
$(BUILD)/fp8_report: tools/fp8_report.c $(BUILD)/libdsv3.a
	@$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)
experiments-fp8: $(FP8_ARMS:%=runs/fp8/%.jsonl) $(BUILD)/fp8_report $(BUILD)/notebooks/09_fp8_accumulation
	@mkdir -p docs/img
	$(BUILD)/notebooks/09_fp8_accumulation | tee runs/fp8/accumulation.txt
	nice $(BUILD)/fp8_report --memory models/kjv-config.json data/train.bin 256 | tee runs/fp8/memory.md
	$(BUILD)/fp8_report runs/fp8 $(foreach a,$(FP8_ARMS),$(a)=runs/fp8/$(a).jsonl) | tee runs/fp8/table.md
	nice $(BUILD)/fp8_report --fidelity runs/fp8/fp32/latest data/val.bin 8 | tee runs/fp8/fidelity.md
	@command -v gnuplot >/dev/null || { if [ "$$(id -u)" = 0 ]; then apt-get install -y --no-install-recommends gnuplot-nox; else sudo apt-get install -y gnuplot-nox; fi; }
	gnuplot -e 'dir="runs/fp8"' tools/plot_fp8.gp
	$(MAKE) --no-print-directory runs/fp8/wide-fidelity.md

# Ablation (b) where promotion matters: the per-step fidelity at DeepSeek-V3's inner dimension
# (hidden 4096, models/fp8-wide-config.json), from a checkpoint after 4 FP32 steps. ~5 CPU-minutes.
runs/fp8/wide-fidelity.md: | data $(BUILD)/dsv3 $(BUILD)/fp8_report
	@mkdir -p runs/fp8
	nice $(BUILD)/dsv3 train --train data/train.bin --config models/fp8-wide-config.json -n 4 -b 2 -T 128 --val-every 0 \
	  -o runs/fp8/wide > runs/fp8/wide.out 2>&1
	nice $(BUILD)/fp8_report --fidelity runs/fp8/wide/latest data/val.bin 2 | tee $@.tmp
	@mv $@.tmp $@

# ---- CUDA build, GPU tests and benchmarks --------------------------------------------------
ifeq ($(HAVE_CUDA),1)
# nvcc objects; ptxas's register/spill report for every kernel goes to <object>.ptxas.txt.
$(GPU)/obj/%.o: %.cu
	@mkdir -p $(dir $@)
	@echo "  NVCC    $<"
	@$(NVCC) $(NVCC_FLAGS) -MMD -MP -MF $(@:.o=.d) -c $< -o $@ 2> $@.ptxas.txt || { cat $@.ptxas.txt; exit 1; }
	@grep -v "^ptxas info\|^    [0-9]* bytes stack frame\|^$$" $@.ptxas.txt || true

# The GEMM_PERSISTENT value of the last build, rewritten (so newer) when it changes: fp8_gemm.o then
# rebuilds. Written at parse time: a file made by a rule would be secondary (.SECONDARY above), and
# a missing secondary prerequisite does not trigger a rebuild.
GEMM_FLAG_FILE := $(GPU)/gemm_persistent.flag
$(shell mkdir -p $(GPU) && { test "$$(cat $(GEMM_FLAG_FILE) 2>/dev/null)" = "$(GEMM_PERSISTENT)" || \
        echo "$(GEMM_PERSISTENT)" > $(GEMM_FLAG_FILE); })
$(GPU)/obj/kernels/fp8_gemm.o: $(GEMM_FLAG_FILE)

$(GPU)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $< (gpu)"
	@$(CC) $(GPU_CFLAGS) -c $< -o $@

$(BUILD)/libdsv3fast.a: $(FAST_OBJ)
	@rm -f $@
	@ar rcs $@ $^

$(GPU)/libdsv3ref.a: $(GPU_REF_OBJ)
	@rm -f $@
	@ar rcs $@ $^

$(GPU_TEST_BIN): $(GPU_KERNEL_TEST_OBJ) $(GPU_TEST_SUPPORT) $(BUILD)/libdsv3fast.a $(GPU)/libdsv3ref.a
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(NVCC) -o $@ $^ $(GPU_LDFLAGS)

$(GPU_BENCH_BIN): $(GPU)/obj/tests/gpu/bench_kernels.o $(GPU_TEST_SUPPORT) $(BUILD)/libdsv3fast.a $(GPU)/libdsv3ref.a
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(NVCC) -o $@ $^ $(GPU_LDFLAGS) -lcublasLt

# Expert parallelism over NCCL, 1 rank (single-GPU machines); ref/ep/ep.c and the bootstrap link from the GPU ref lib.
GPU_EP_TEST_BIN := $(BUILD)/tests/test_gpu_ep_nccl
$(GPU_EP_TEST_BIN): $(GPU)/obj/tests/gpu/test_ep_nccl.o $(BUILD)/libdsv3fast.a $(GPU)/libdsv3ref.a
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(NVCC) -o $@ $^ $(GPU_LDFLAGS) -L$(NCCL_HOME)/lib -L$(NCCL_HOME)/lib64 -Xlinker -rpath=$(NCCL_HOME)/lib $(NCCL_LIB) -Xcompiler -pthread

# Compile everything CUDA (CI's compile check).
cuda: $(BUILD)/libdsv3fast.a $(GPU_TEST_BIN) $(GPU_BENCH_BIN) $(GPU_EP_TEST_BIN) $(FAST_MODEL_TEST_BIN) $(FAST_MODEL_BENCH_BIN)

# Every group in its own process, so that a kernel that traps (and kills the CUDA context)
# cannot hide the results of the others; WGMMA last. Exit status: failures anywhere.
GPU_GROUPS ?= ops act_quant gemm_mma mla moe generic gemm_wgmma
GPU_TEST_ARGS ?=
test-gpu: $(GPU_TEST_BIN) $(GPU_EP_TEST_BIN) $(FAST_MODEL_TEST_BIN) $(BUILD)/dsv3
	@fail=0; for g in $(GPU_GROUPS); do \
	  echo "=== test_gpu_kernels --group $$g $(GPU_TEST_ARGS)"; \
	  $(GPU_TEST_BIN) --group $$g $(GPU_TEST_ARGS) || fail=$$((fail+1)); \
	done; \
	echo "=== test_gpu_ep_nccl"; $(GPU_EP_TEST_BIN) || fail=$$((fail+1)); \
	echo "=== test_fast_model"; $(FAST_MODEL_TEST_BIN) --cli $(BUILD)/dsv3 || fail=$$((fail+1)); \
	echo "test-gpu: $$fail group(s) failed"; test $$fail -eq 0

# BENCH_ARGS="--only gemm|grouped|mla|ops" narrows the C benchmark; PEERS=0 skips the Python peers.
BENCH_ARGS ?=
PEERS ?= 1
bench-gpu: $(GPU_BENCH_BIN)
	@$(GPU_BENCH_BIN) $(BENCH_ARGS)
	@if [ "$(PEERS)" != 1 ]; then echo "bench_peers: skipped (PEERS=$(PEERS))"; \
	elif python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then \
	  python3 tools/bench_peers.py; \
	else echo "bench_peers: skipped (python3 with a CUDA-enabled torch is not importable here)"; fi

# compute-sanitizer over the quick test: memcheck, racecheck (shared memory), synccheck, initcheck.
# Narrow it with SANITIZE_TOOLS="memcheck" SANITIZE_ARGS="--quick --group mla".
SANITIZE_TOOLS ?= memcheck racecheck synccheck initcheck
SANITIZE_ARGS ?= --quick
sanitize-gpu: $(GPU_TEST_BIN)
	@test -n "$(COMPUTE_SANITIZER)" || { echo "sanitize-gpu: compute-sanitizer not found (CUDA_HOME=$(CUDA_HOME), PATH)"; exit 1; }
	@fail=0; for tool in $(SANITIZE_TOOLS); do \
	  echo "=== compute-sanitizer --tool $$tool $(GPU_TEST_BIN) $(SANITIZE_ARGS)"; \
	  $(COMPUTE_SANITIZER) --tool $$tool --error-exitcode 99 $(GPU_TEST_BIN) $(SANITIZE_ARGS) || fail=$$((fail+1)); \
	done; echo "sanitize-gpu: $$fail tool run(s) failed"; test $$fail -eq 0

# The GPU test against a host emulation of the kernels' algorithms (tests/gpu/mock_cuda.c):
# checks the harness and the algorithms on a machine without a GPU; proves nothing about the CUDA code.
$(BUILD)/tests/test_gpu_mock: $(GPU_KERNEL_TEST_OBJ) $(GPU)/obj/tests/gpu/gpu_util.o \
                              $(GPU)/obj/tests/gpu/mock_cuda.o $(GPU)/obj/tests/gpu/mock_generic.o \
                              $(GPU)/obj/fast/fast.o $(GPU)/libdsv3ref.a
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(CC) -o $@ $^ -Wl,--gc-sections -fopenmp -lm
test-gpu-mock: $(BUILD)/tests/test_gpu_mock $(BUILD)/tests/test_fast_model_mock $(BUILD)/tests/dsv3_mock
	@$(BUILD)/tests/test_gpu_mock --quick
	@$(BUILD)/tests/test_fast_model_mock --cli $(BUILD)/tests/dsv3_mock

# The whole-model GPU path (fast/*_gpu.c) against the reference. Two builds of one test:
#   test_fast_model       the CUDA kernels (make test-gpu; SKIP without a GPU)
#   test_fast_model_mock  the host emulation of the kernels (make test): checks the orchestration
# Both link the full reference library (model_load needs cJSON: DEB_ROOT on the GPU machines).
FAST_HOST_OBJ := $(FAST_C:%.c=$(GPU)/obj/%.o)
$(GPU)/libdsv3fast_host.a: $(FAST_HOST_OBJ)
	@rm -f $@
	@ar rcs $@ $^
$(BUILD)/tests/test_fast_model_mock: $(GPU)/obj/tests/gpu/test_fast_model.o $(GPU)/obj/tests/gpu/gpu_util.o $(GPU)/obj/tests/gpu/mock_cuda.o \
                                     $(GPU)/obj/tests/gpu/mock_generic.o $(GPU)/libdsv3fast_host.a \
                                     $(BUILD)/obj/tests/util_compare.o $(BUILD)/libdsv3.a
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(CC) -o $@ $^ -fopenmp $(LDLIBS)
# End-to-end speed of the GPU path (make bench-gpu-model; the peers: tools/bench_e2e_peers.py).
$(FAST_MODEL_BENCH_BIN): $(GPU)/obj/tests/gpu/bench_fast_model.o $(BUILD)/libdsv3fast.a $(BUILD)/libdsv3.a
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(NVCC) -o $@ $^ -Xcompiler -fopenmp,-pthread $(if $(DEB_ROOT),-L$(DEB_LIBDIR) -Xlinker -rpath=$(abspath $(DEB_LIBDIR))) \
	  -lcjson -lpcre2-8 -lonig -lm -L$(NCCL_HOME)/lib -L$(NCCL_HOME)/lib64 -Xlinker -rpath=$(NCCL_HOME)/lib $(NCCL_LIB) $(MPI_LIBS)
# A real-width, reduced-depth FP8 checkpoint (hidden 7168, 128 heads, 256 experts; BENCH_LAYERS layers:
# the first 3 dense like V3, then MoE), the peers' and ours alike.
BENCH_LAYERS ?= 4
BENCH_MODEL ?= $(BUILD)/bench-model-$(BENCH_LAYERS)l
$(BENCH_MODEL)/config.json: | $(BUILD)/dsv3
	$(BUILD)/dsv3 mkckpt -o $(BENCH_MODEL) --preset v3 --set num_hidden_layers=$(BENCH_LAYERS) --mtp 0
BENCH_E2E_ARGS ?= --batches 1,8,64 --prompt-len 512 --decode-steps 32
PEER_TIME_BUDGET ?= 240
bench-gpu-model: $(FAST_MODEL_BENCH_BIN) $(BENCH_MODEL)/config.json
	@$(FAST_MODEL_BENCH_BIN) --model $(BENCH_MODEL) $(BENCH_E2E_ARGS)
	@if [ "$(PEERS)" != 1 ]; then echo "bench_e2e_peers: skipped (PEERS=$(PEERS))"; \
	elif python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then \
	  python3 tools/bench_e2e_peers.py --model $(BENCH_MODEL) $(BENCH_E2E_ARGS) --time-budget $(PEER_TIME_BUDGET); \
	else echo "bench_e2e_peers: skipped (python3 with a CUDA-enabled torch is not importable here)"; fi

# dsv3 itself over the host emulation: the CLI's --backend fast path end to end, on any machine with nvcc.
$(BUILD)/tests/dsv3_mock: $(BUILD)/obj/ref/cli/main.o $(GPU)/obj/fast/backend_gpu.o $(BUILD)/libdsv3.a $(GPU)/libdsv3fast_host.a \
                          $(GPU)/obj/tests/gpu/mock_cuda.o $(GPU)/obj/tests/gpu/mock_generic.o
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(CC) -o $@ $^ -fopenmp $(LDLIBS)
# The GPU build also runs expert parallelism over a real (1-rank) NCCL communicator: DSV3_TEST_NCCL.
$(GPU)/obj/tests/gpu/test_fast_model_nccl.o: tests/gpu/test_fast_model.c
	@mkdir -p $(dir $@)
	@echo "  CC      $< (gpu, NCCL)"
	@$(CC) $(GPU_CFLAGS) -DDSV3_TEST_NCCL -c $< -o $@
$(FAST_MODEL_TEST_BIN): $(GPU)/obj/tests/gpu/test_fast_model_nccl.o $(GPU)/obj/tests/gpu/gpu_util.o $(BUILD)/libdsv3fast.a $(BUILD)/obj/tests/util_compare.o \
                        $(BUILD)/libdsv3.a
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(NVCC) -o $@ $^ -Xcompiler -fopenmp,-pthread $(if $(DEB_ROOT),-L$(DEB_LIBDIR) -Xlinker -rpath=$(abspath $(DEB_LIBDIR))) \
	  -lcjson -lpcre2-8 -lonig -lm -L$(NCCL_HOME)/lib -L$(NCCL_HOME)/lib64 -Xlinker -rpath=$(NCCL_HOME)/lib $(NCCL_LIB) $(MPI_LIBS)

-include $(shell find $(GPU)/obj -name '*.d' 2>/dev/null)
else
cuda test-gpu bench-gpu bench-gpu-model sanitize-gpu test-gpu-mock:
	@echo "$@: nvcc not found at $(NVCC) (set CUDA_HOME); nothing to do"
endif
