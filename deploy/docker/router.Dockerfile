# syntax=docker/dockerfile:1
# tessera-router: schedules every token over the worker groups that attach to it. Build from
# the repository root:
#   docker build -f deploy/docker/router.Dockerfile -t tessera/router .
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
 && cmake --build /build --target tessera-router tessera \
 && install -D -m 0755 /build/router/tessera-router /out/bin/tessera-router \
 && install -D -m 0755 /build/launcher/tessera /out/bin/tessera \
 && runtime-packages.sh /out/bin/tessera-router /out/bin/tessera > /out/runtime-packages.txt

FROM ${RUNTIME_IMAGE}
COPY deploy/docker/runtime-setup.sh /usr/local/bin/
COPY --from=build /out/runtime-packages.txt /tmp/
RUN runtime-setup.sh /tmp/runtime-packages.txt && rm /tmp/runtime-packages.txt
# The `tessera` launcher comes along for `tessera config check` and `tessera loadgen --router`.
COPY --from=build /out/bin/ /usr/local/bin/
COPY deploy/config/tessera.yaml /etc/tessera/tessera.yaml
USER 10001:10001
WORKDIR /var/lib/tessera
EXPOSE 50051 9101
# /health on router.metrics_port: every worker group's step loop makes progress.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9101/health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tessera-router"]
CMD ["--config", "/etc/tessera/tessera.yaml"]
