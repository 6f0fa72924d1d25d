#!/usr/bin/env bash
# The robustness experiment's paper protocol, reduced to fit about 10 minutes on one GPU: 192 x 192 crops, batch
# 10 + 10, Adam 1e-4 constant, three arms x three seeds side by side, models evaluated after 250 and 500 iterations
# on every synthetic test domain. Results go to docs/results/gpu_reduced/ (ledger, report, plots).
# Run from the repository root with the virtual environment active.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python -m tools.robustness --protocol paper --device cuda --tag gpu_reduced \
    --budgets 250 500 --seeds 0 1 2 --test_subjects 10 --jobs 3 --threads 4 "$@"
