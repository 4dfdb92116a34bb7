# dsa-runtime for AMD Instinct MI300X / MI325X (gfx942) and MI350X / MI355X (gfx950): AITER kernels,
# Triton, and the portable torch backend. One image serves both.
#   docker build -f docker/rocm.Dockerfile -t dsa-runtime:rocm .
#   docker run --rm --device=/dev/kfd --device=/dev/dri --group-add video --ipc=host dsa-runtime:rocm conformance --device mi300x --report /out
# The base image brings ROCm, a ROCm build of torch and its matching Triton (pytorch-triton-rocm).
ARG ROCM_IMAGE=rocm/pytorch:rocm7.0_ubuntu24.04_py3.12_pytorch_release_2.8.0
FROM ${ROCM_IMAGE}

ARG AITER_VERSION=0.1.7.post2.dev18
# Architectures AITER builds its JIT kernels for.
ARG GPU_ARCHS="gfx942;gfx950"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    GPU_ARCHS=${GPU_ARCHS}

RUN pip install "amd-aiter==${AITER_VERSION}"

# dsa-runtime itself, installed as a release is: a wheel built from the checkout (the build context;
# .dockerignore keeps only what the wheel needs), installed non-editable with the `conformance` extra
# (`dsa conformance` runs the cases shipped inside the package, under pytest). Not the `rocm` extra: it
# would add PyPI's triton on top of the base image's pytorch-triton-rocm (both provide the `triton`
# module); the base image's build matches its torch, so it is kept. The source and the wheel are deleted
# once installed (the source, under 1 MB, stays in the COPY layer).
COPY . /tmp/src
RUN pip wheel --no-deps --wheel-dir /tmp/wheels /tmp/src \
    && pip install "$(find /tmp/wheels -name 'dsa_runtime-*.whl')[conformance]" \
    && rm -rf /tmp/src /tmp/wheels

# A neutral working directory: relative paths (`--report out`, the default ./conformance-report) land here.
WORKDIR /work

# `dsa serve --host 0.0.0.0` (the OpenAI-compatible server) listens here: docker run -p 8000:8000 ...
EXPOSE 8000

ENTRYPOINT ["dsa"]
CMD ["--help"]
