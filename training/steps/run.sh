#!/usr/bin/env bash
# What every processing and training job runs once the bootstrap (pipeline_definition.BOOTSTRAP) has
# unpacked the step code into the current folder: install the pinned requirements, run the step.
# --require-hashes: every file pip downloads must have a SHA-256 of requirements.lock (make hashes
# writes it from requirements.txt), so a replaced file on the index fails the job instead of running.
set -euo pipefail
python3 -m pip install --quiet --no-cache-dir --disable-pip-version-check --require-hashes \
    -r "$PWD/training/steps/requirements.lock"
exec python3 -m training.steps.cli "$@"
