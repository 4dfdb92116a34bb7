# dsa-runtime on the CPU (x86-64 or arm64): the portable `torch` backend; also the image CI's
# tests mirror (tests/unit/test_docker.py runs these pip steps in a fresh venv).
#   docker build -f docker/cpu.Dockerfile -t dsa-runtime:cpu .
#   docker run --rm dsa-runtime:cpu run --device cpu --prompt "Hello" --max-new-tokens 16
# Python 3.11: the version the project's CPU environments use (and its torch wheel is built for).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_VERSION=2.13.0
# The CPU wheel index: a plain `pip install torch` on x86-64 pulls the multi-GB CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# The whole checkout (tests included: `dsa conformance` runs them), installed in place.
WORKDIR /opt/dsa-runtime
COPY . .
RUN pip install -e ".[cpu,test]"

ENTRYPOINT ["dsa"]
CMD ["--help"]
