#!/bin/sh
# Prints the Debian/Ubuntu packages that hold the shared libraries the given binaries load,
# one per line, so a runtime stage installs exactly those (and nothing from the build
# toolchain). Run in the build stage, where the -dev packages pulled the libraries in.
# Fails when a library belongs to no package: the runtime stage could not install it.
#   runtime-packages.sh BINARY... > runtime-packages.txt
set -eu
[ "$#" -gt 0 ] || { echo "usage: runtime-packages.sh BINARY..." >&2; exit 2; }
libs=$(for bin in "$@"; do ldd "$bin"; done | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u)
# With merged /usr, ldd may name /lib/... where dpkg recorded /usr/lib/... (or the reverse),
# and a library may be a symlink to the file the package holds: ask about every spelling at
# once (one dpkg-query is much faster than one per path).
candidates=""
for lib in $libs; do
  real=$(readlink -f "$lib")
  candidates="$candidates $lib $real /usr$lib /usr$real ${lib#/usr} ${real#/usr}"
done
# shellcheck disable=SC2086  # one path per word
owners=$(dpkg-query -S $candidates 2>/dev/null || true)
packages=""
for lib in $libs; do
  real=$(readlink -f "$lib")
  found=""
  for path in "$lib" "$real" "/usr$lib" "/usr$real" "${lib#/usr}" "${real#/usr}"; do
    # Lines read "package[:arch]: path".
    found=$(printf '%s\n' "$owners" | awk -v p="$path" '{ f = $NF } f == p { sub(/:.*/, "", $1); print $1; exit }')
    [ -n "$found" ] && break
  done
  if [ -z "$found" ]; then
    echo "runtime-packages.sh: no package holds $lib" >&2
    exit 1
  fi
  packages="$packages $found"
done
# shellcheck disable=SC2086  # one package per word
printf '%s\n' $packages | sort -u
