# migserve with CUDA: `migserve serve` over the GPU's MIG slices.
#
#   docker build -t migserve .
#   docker run --gpus all -p 8080:8080 -v /srv/models:/models:ro migserve \
#       --config /etc/migserve/configs/h100-7x1g.10gb.toml
#
# Models are mounted at /models (the configs in configs/ point there), never baked in.
# CUDA 13.0 to match the build checked in CI (PyPI nvcc 13.0.88) and driver 580+.
# The compute capability defaults to 90 (H100/H200); pass --build-arg CUDA_COMPUTE_CAP=80 for
# A100.

ARG CUDA_VERSION=13.0.1
ARG UBUNTU=ubuntu24.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
ARG CUDA_COMPUTE_CAP=90
# The toolchain CI builds and tests with.
ARG RUST_VERSION=1.95.0
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl build-essential pkg-config \
    && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo PATH=/opt/cargo/bin:$PATH
RUN curl -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain ${RUST_VERSION}
WORKDIR /src
COPY . .
# No nvidia-smi at build time: the target GPU generation comes from CUDA_COMPUTE_CAP.
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
RUN cargo build --release --locked -p migserve --features cuda \
    && strip target/release/migserve

FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/migserve migserve \
    && mkdir -p /models
COPY --from=build /src/target/release/migserve /usr/local/bin/migserve
COPY configs/ /etc/migserve/configs/
USER 10001:10001
WORKDIR /var/lib/migserve
VOLUME ["/models"]
EXPOSE 8080
# The front's /health is 200 once at least one slice's worker is ready. Loading models takes
# a while: unhealthy results during the start period do not count.
HEALTHCHECK --interval=15s --timeout=3s --start-period=180s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["migserve", "serve"]
CMD ["--config", "/etc/migserve/configs/h100-7x1g.10gb.toml", "--listen", "0.0.0.0:8080"]
