"""Entry point of the pipeline's training and tuning jobs (SageMaker script mode).

A tuning job cannot set a container entry point, so both kinds of training job start the image's own
entry point, the SageMaker training toolkit of the AWS Deep Learning Containers: it unpacks the step
code (`sagemaker_submit_directory`), installs its root `requirements.txt` and runs this file
(`sagemaker_program`) with the code's root on the Python path. The toolkit also passes the
hyperparameters as arguments; the train step reads them from hyperparameters.json, as every job.
"""

from __future__ import annotations

import sys

from training.steps import cli

if __name__ == "__main__":
    sys.exit(cli.main(["train"]))
