# syntax=docker/dockerfile:1
# tessera-worker: holds the model and executes the router's step plans. Build from the
# repository root. The default is the CUDA build (CUDA devel base to build, CUDA runtime base
# to run); the CPU build swaps the bases and turns CUDA off:
#   docker build -f deploy/docker/worker.Dockerfile -t tessera/worker .
#   docker build -f deploy/docker/worker.Dockerfile -t tessera/worker-cpu \
#     --build-arg BUILD_IMAGE=debian:12 --build-arg RUNTIME_IMAGE=debian:12-slim --build-arg TESSERA_CUDA=OFF .
ARG BUILD_IMAGE=nvidia/cuda:13.0.0-devel-ubuntu24.04
ARG RUNTIME_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04

FROM ${BUILD_IMAGE} AS build
ARG TESSERA_CUDA=ON
# 90a: H100/H200 (cmake/TesseraCuda.cmake); e.g. "80;90a" adds A100.
ARG CUDA_ARCHITECTURES=90a
COPY deploy/docker/build-deps.sh /usr/local/bin/
RUN build-deps.sh
WORKDIR /src
COPY CMakeLists.txt ./
COPY cmake cmake
COPY proto proto
COPY common common
COPY kernels kernels
COPY gateway gateway
COPY router router
COPY worker worker
COPY launcher launcher
# CMake configures the benchmark tools too (their sources live with their driver scripts).
COPY scripts/bench/*.cc scripts/bench/
COPY deploy/docker/runtime-packages.sh /usr/local/bin/
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DTESSERA_CUDA="${TESSERA_CUDA}" \
      -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}" -DTESSERA_BUILD_TESTS=OFF \
 && cmake --build /build --target tessera-worker \
 && install -D -m 0755 /build/worker/tessera-worker /out/bin/tessera-worker \
 && runtime-packages.sh /out/bin/tessera-worker > /out/runtime-packages.txt

FROM ${RUNTIME_IMAGE}
COPY deploy/docker/runtime-setup.sh /usr/local/bin/
COPY --from=build /out/runtime-packages.txt /tmp/
RUN runtime-setup.sh /tmp/runtime-packages.txt && rm /tmp/runtime-packages.txt
COPY --from=build /out/bin/ /usr/local/bin/
COPY deploy/config/tessera.yaml /etc/tessera/tessera.yaml
USER 10001:10001
WORKDIR /var/lib/tessera
EXPOSE 9102
# /health on worker.metrics_port: the process is up and not stopping (it turns 200 before the
# model is loaded; /ready says loaded and attached).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9102/health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tessera-worker"]
CMD ["--config", "/etc/tessera/tessera.yaml"]
