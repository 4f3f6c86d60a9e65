#!/usr/bin/env bash
# Run by Snakemake inside the new conda environment (`--sdm conda`): install wsimil from this repository
# without dependencies (the environment file provides them all).
set -euo pipefail
python -m pip install --no-deps --no-build-isolation "$(dirname "$0")/.."
