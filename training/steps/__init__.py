"""Code of the training pipeline's steps: plain functions over local folders or S3, no SageMaker SDK.

The same functions run in the SageMaker processing and training containers (through `cli.py`), in
the pipeline's baseline Lambda function (`gate.py`) and on a workstation (`training.local`).
Modules here import only the standard library, `shared.contracts` and the pinned packages of
`requirements.txt`: the container gets this folder, `shared/contracts.py` and nothing else.
"""
