#!/usr/bin/env bash
# Install Slurm, munge and PMIx from Debian (for the tests' private one-node Slurm cluster) when
# they are missing and apt-get can be used (root or passwordless sudo). Otherwise do nothing: the
# Slurm tests then skip and say how to install.
set -uo pipefail
have() { command -v slurmctld >/dev/null 2>&1 || [ -x /usr/sbin/slurmctld ]; }
have_all() { have && { command -v munged >/dev/null 2>&1 || [ -x /usr/sbin/munged ]; } && dpkg -s libpmix-dev >/dev/null 2>&1; }
if have_all || ! command -v apt-get >/dev/null 2>&1; then
  exit 0
fi
packages="slurm-wlm munge libpmix-dev"
if [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null) || \
    echo "install_slurm: apt-get install $packages failed; the Slurm tests will skip" >&2
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null) || \
    echo "install_slurm: apt-get install $packages failed; the Slurm tests will skip" >&2
else
  echo "install_slurm: not root and no sudo: install $packages to run the Slurm tests" >&2
fi
exit 0
