# dsa-runtime on the CPU (x86-64 or arm64): the portable `torch` backend; also the image CI's
# tests mirror (tests/unit/test_docker.py and test_install.py replay its COPY / RUN steps in a fresh venv).
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

# dsa-runtime itself, installed as a release is: a wheel built from the checkout (the build context;
# .dockerignore keeps only what the wheel needs), installed non-editable with the `cpu` and
# `conformance` extras (`dsa conformance` runs the cases shipped inside the package, under pytest).
# The source and the wheel are deleted once installed (the source, under 1 MB, stays in the COPY layer).
COPY . /tmp/src
RUN pip wheel --no-deps --wheel-dir /tmp/wheels /tmp/src \
    && pip install "$(find /tmp/wheels -name 'dsa_runtime-*.whl')[cpu,conformance]" \
    && rm -rf /tmp/src /tmp/wheels

# A neutral working directory: relative paths (`--report out`, the default ./conformance-report) land here.
WORKDIR /work

# `dsa serve --host 0.0.0.0` (the OpenAI-compatible server) listens here: docker run -p 8000:8000 ...
EXPOSE 8000

ENTRYPOINT ["dsa"]
CMD ["--help"]
