#!/usr/bin/env bash
# Install the DFT codes this kind of machine can have (Debian 12, root), then say which work.
#   run_scripts/install_dft_codes.sh [--with-gpaw]
# PySCF, tblite and i-PI's Python driver come with the package's test/dft extras (pip).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt_packages="quantum-espresso quantum-espresso-data cp2k cp2k-data"
if [ "${1:-}" = "--with-gpaw" ]; then
  apt_packages="$apt_packages libxc-dev libfftw3-dev libopenmpi-dev"
fi
if command -v apt-get >/dev/null; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get install -y -q $apt_packages
else
  echo "no apt-get here: install Quantum ESPRESSO and CP2K with your system's packages" >&2
fi
py=.venv/bin/python
[ -x "$py" ] || py=python3
"$py" -m pip install -q 'pyscf>=2.6' 'tblite>=0.4' 'ipi>=3.0'
if [ "${1:-}" = "--with-gpaw" ]; then
  "$py" -m pip install -q gpaw
fi
"$py" -m slhmc codes
