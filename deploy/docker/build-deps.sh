#!/bin/sh
# Installs what building Tessera needs in a Debian 12 or Ubuntu 24.04 build stage (the
# packages of scripts/setup, without the test tools). CMake 3.25 or newer is required.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  build-essential cmake ninja-build pkg-config git ca-certificates \
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libssl-dev \
  libboost-dev libyaml-cpp-dev libopenmpi-dev \
  libpcre2-dev libutf8proc-dev nlohmann-json3-dev libspdlog-dev libfmt-dev
rm -rf /var/lib/apt/lists/*
