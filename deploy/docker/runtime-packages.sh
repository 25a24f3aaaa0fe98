#!/bin/sh
# Prints the Debian/Ubuntu packages that hold the shared libraries the given binaries load,
# one per line, so a runtime stage installs exactly those (and nothing from the build
# toolchain). Run in the build stage, where the -dev packages pulled the libraries in.
# Fails when a library belongs to no package: the runtime stage could not install it.
#   runtime-packages.sh BINARY... > runtime-packages.txt
set -eu
[ "$#" -gt 0 ] || { echo "usage: runtime-packages.sh BINARY..." >&2; exit 2; }
libs=$(for bin in "$@"; do ldd "$bin"; done | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u)
packages=""
for lib in $libs; do
  real=$(readlink -f "$lib")
  found=""
  # With merged /usr, ldd may name /lib/... while dpkg recorded /usr/lib/... (or the reverse).
  for path in "$lib" "$real" "/usr$lib" "/usr$real" "${lib#/usr}" "${real#/usr}"; do
    found=$(dpkg-query -S "$path" 2>/dev/null | head -n 1 | cut -d: -f1) || true
    [ -n "$found" ] && break
  done
  if [ -z "$found" ]; then
    echo "runtime-packages.sh: no package holds $lib" >&2
    exit 1
  fi
  packages="$packages $found"
done
printf '%s\n' $packages | sort -u
