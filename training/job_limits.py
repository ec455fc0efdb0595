"""How long the pipeline's jobs may run: the definition sets these limits, the workflow waits that long.

Apart from training/pipeline_definition.py so that the workflow's timeout needs no SageMaker SDK.
"""

from __future__ import annotations

PROCESSING_MAX_RUNTIME_SECONDS = 4 * 3600
MAX_WAIT_LIMIT_SECONDS = 2_419_200  # 28 days: the longest wait SageMaker accepts
