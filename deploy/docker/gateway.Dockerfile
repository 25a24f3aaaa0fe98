# syntax=docker/dockerfile:1
# tessera-gateway: the OpenAI-compatible HTTP front door. Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t tessera/gateway .
ARG BUILD_IMAGE=debian:12
ARG RUNTIME_IMAGE=debian:12-slim

FROM ${BUILD_IMAGE} AS build
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
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DTESSERA_CUDA=OFF -DTESSERA_BUILD_TESTS=OFF \
 && cmake --build /build --target tessera-gateway \
 && install -D -m 0755 /build/gateway/tessera-gateway /out/bin/tessera-gateway \
 && runtime-packages.sh /out/bin/tessera-gateway > /out/runtime-packages.txt

FROM ${RUNTIME_IMAGE}
COPY deploy/docker/runtime-setup.sh /usr/local/bin/
COPY --from=build /out/runtime-packages.txt /tmp/
RUN runtime-setup.sh /tmp/runtime-packages.txt && rm /tmp/runtime-packages.txt
COPY --from=build /out/bin/ /usr/local/bin/
COPY deploy/config/tessera.yaml /etc/tessera/tessera.yaml
USER 10001:10001
WORKDIR /var/lib/tessera
EXPOSE 8000
# /health: some router behind this gateway makes progress (docs/API.md).
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8000/health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tessera-gateway"]
CMD ["--config", "/etc/tessera/tessera.yaml"]
