#!/usr/bin/env bash
# Prepare .device/ (git-ignored) for benchmarks/device_check.py on a lent GPU machine, which reaches
# no package registry: wheels of what its image lacks, for its Python (3.12 on the H200 image, per
# the device notes), and the reference fixtures. About 16 MB; the run tool carries up to 64 MiB.
#
#   benchmarks/prepare_device_check.sh [PYTHON_VERSION]
#
# then run there, carrying ".device":
#   python3 -m pip install --quiet --no-deps --no-index --target /tmp/site .device/wheels/*.whl &&
#   PYTHONPATH=/tmp/site python3 benchmarks/device_check.py --device cuda --fixtures .device/fixtures \
#       --out $OUT/device_check.md
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-3.12}"
rm -rf .device
python -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" \
    --platform manylinux_2_28_x86_64 -d .device/wheels pyzmq OpenImageIO opencolorio
mkdir -p .device/fixtures
cp "${SPARSEMAT_FIXTURES:-../shared/fixtures/official}"/{make_ckpt.py,spec.json,seed1_256x384.npz} .device/fixtures/
du -sh .device
