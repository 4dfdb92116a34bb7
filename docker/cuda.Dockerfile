# dsa-runtime for NVIDIA Hopper (H100 / H200 / H20, sm90) and Blackwell (B200, sm100): FlashMLA,
# DeepGEMM and TileLang kernels, Triton, and the portable torch backend. One image serves both; A100
# (sm80) and RTX PRO 6000 (sm120) run it too, on torch + Triton (FlashMLA / DeepGEMM have no kernels there).
#   docker build -f docker/cuda.Dockerfile -t dsa-runtime:cuda .
#   docker run --rm --gpus all --ipc=host dsa-runtime:cuda conformance --device h200 --report /out
# CUDA 12.9: FlashMLA's sm100 kernels need 12.9+, its sm90 ones 12.8+.
ARG CUDA_IMAGE=nvidia/cuda:12.9.1-cudnn-devel-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu129
ARG TILELANG_VERSION=0.1.15
# FlashMLA and DeepGEMM build from source at these commits (their PyPI names are stale placeholders);
# bump them deliberately, then re-run `dsa conformance` on the hardware.
ARG FLASHMLA_REPO=https://github.com/deepseek-ai/FlashMLA.git
ARG FLASHMLA_REF=066b5ba6f63d9d0840eac008fe58a1f70acfac78
ARG DEEPGEMM_REPO=https://github.com/deepseek-ai/DeepGEMM.git
ARG DEEPGEMM_REF=8442cf69b938184fa3d88b828b76551abab1edf6
# sm90a (Hopper) and sm100a (Blackwell); narrow it for a faster build of one family.
ARG TORCH_CUDA_ARCH_LIST="9.0a;10.0a"
ARG MAX_JOBS=8

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    MAX_JOBS=${MAX_JOBS}

# The distribution's Python and build tools; the base image tag pins their versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-dev python3-venv git ninja-build \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "${VIRTUAL_ENV}"

RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && pip install "tilelang==${TILELANG_VERSION}"

WORKDIR /opt/src
RUN git clone "${FLASHMLA_REPO}" flash-mla \
    && git -C flash-mla checkout "${FLASHMLA_REF}" \
    && git -C flash-mla submodule update --init --recursive \
    && pip install --no-build-isolation -v ./flash-mla
RUN git clone "${DEEPGEMM_REPO}" deep-gemm \
    && git -C deep-gemm checkout "${DEEPGEMM_REF}" \
    && git -C deep-gemm submodule update --init --recursive \
    && DEEP_GEMM_FORCE_BUILD=TRUE pip install --no-build-isolation -v ./deep-gemm

# dsa-runtime itself, installed as a release is: a wheel built from the checkout (the build context;
# .dockerignore keeps only what the wheel needs), installed non-editable with the `cuda` and
# `conformance` extras (`dsa conformance` runs the cases shipped inside the package, under pytest).
# The source and the wheel are deleted once installed (the source, under 1 MB, stays in the COPY layer).
COPY . /tmp/src
RUN pip wheel --no-deps --wheel-dir /tmp/wheels /tmp/src \
    && pip install "$(find /tmp/wheels -name 'dsa_runtime-*.whl')[cuda,conformance]" \
    && rm -rf /tmp/src /tmp/wheels

# A neutral working directory: relative paths (`--report out`, the default ./conformance-report) land here.
WORKDIR /work

# `dsa serve --host 0.0.0.0` (the OpenAI-compatible server) listens here: docker run -p 8000:8000 ...
EXPOSE 8000

ENTRYPOINT ["dsa"]
CMD ["--help"]
