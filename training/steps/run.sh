#!/usr/bin/env bash
# What every processing and training job runs once the bootstrap (pipeline_definition.BOOTSTRAP) has
# unpacked the step code into the current folder: install the pinned requirements, run the step.
set -euo pipefail
python3 -m pip install --quiet --no-cache-dir --disable-pip-version-check -r "$PWD/training/steps/requirements.txt"
exec python3 -m training.steps.cli "$@"
