# dsa-runtime for Huawei Ascend A3 (Atlas 800T A3 / 910C, ascend910_93): torch_npu and its CANN DSA ops
# (npu_lightning_indexer, npu_sparse_flash_attention, npu_grouped_matmul), and the portable torch backend.
#   docker build -f docker/npu-a3.Dockerfile -t dsa-runtime:npu-a3 .
#   docker run (with the davinci device files and driver mounts, see README) dsa-runtime:npu-a3 conformance --device ascend-a3 --report /out
# The base image brings CANN (toolkit + kernels) for this chip family and Python 3.11.
ARG CANN_IMAGE=quay.io/ascend/cann:8.2.rc1-a3-ubuntu22.04-py3.11
FROM ${CANN_IMAGE}

# torch_npu X.Y.Z runs on torch X.Y.Z, the CPU build (torch_npu adds the device).
ARG TORCH_VERSION=2.13.0
ARG TORCH_NPU_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && pip install "torch-npu==${TORCH_NPU_VERSION}"

# dsa-runtime itself, installed as a release is: a wheel built from the checkout (the build context;
# .dockerignore keeps only what the wheel needs), installed non-editable with the `npu` and
# `conformance` extras (`dsa conformance` runs the cases shipped inside the package, under pytest).
# The source and the wheel are deleted once installed (the source, under 1 MB, stays in the COPY layer).
COPY . /tmp/src
RUN pip wheel --no-deps --wheel-dir /tmp/wheels /tmp/src \
    && pip install "$(find /tmp/wheels -name 'dsa_runtime-*.whl')[npu,conformance]" \
    && install -m 0755 /tmp/src/docker/npu-entrypoint.sh /usr/local/bin/dsa-npu \
    && rm -rf /tmp/src /tmp/wheels

# A neutral working directory: relative paths (`--report out`, the default ./conformance-report) land here.
WORKDIR /work

# dsa-npu loads the CANN environment (set_env.sh), then runs `dsa` with the arguments given.
# `dsa serve --host 0.0.0.0` (the OpenAI-compatible server) listens here: docker run -p 8000:8000 ...
EXPOSE 8000

ENTRYPOINT ["/usr/local/bin/dsa-npu"]
CMD ["--help"]
