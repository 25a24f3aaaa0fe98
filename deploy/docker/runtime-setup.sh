#!/bin/sh
# Prepares a runtime stage: installs the packages listed in the given file (the shared
# libraries the binaries load, found by runtime-packages.sh in the build stage) plus curl for
# the health check, and creates the unprivileged user `tessera` (uid and gid 10001).
#   runtime-setup.sh runtime-packages.txt
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2046  # one package per word
apt-get install -y -qq --no-install-recommends ca-certificates curl $(cat "$1")
rm -rf /var/lib/apt/lists/*
groupadd --system --gid 10001 tessera
useradd --system --uid 10001 --gid tessera --home-dir /var/lib/tessera --create-home --shell /usr/sbin/nologin tessera
mkdir -p /etc/tessera /models
