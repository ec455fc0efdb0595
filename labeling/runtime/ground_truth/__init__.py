"""SageMaker Ground Truth for the labeling rounds: job names, job requests, worker task files, output manifests.

A round runs two built-in Ground Truth tasks on the same images:

1. **Bounding box** (`BoundingBox`): workers draw a box around every defect.
2. **Review**: either **verification** (`VerificationBoundingBox`: a reviewer approves or rejects each
   image's boxes) or **adjustment** (`AdjustmentBoundingBox`: a reviewer corrects the boxes).

One concept per module, read in this order:

- `jobs`: the job kinds, their label attributes and built-in task functions, and a round's job names
- `task_ui`: the worker task files (label categories, task templates) from `runtime/task_ui/`
- `job_requests`: the CreateLabelingJob request of a job, and the model's boxes on its input lines
- `answer_lines`: the one parser of output manifest lines both kinds of job share
- `output_manifests`: a bounding-box job's boxes and a review job's label records

This package exports what the rest of the app uses, so `from labeling.runtime import ground_truth as gt`
reads as before.
"""

from labeling.runtime.ground_truth.answer_lines import MAX_REPORTED_PROBLEMS, FailedImage
from labeling.runtime.ground_truth.job_requests import (
    FREE_OF_ADULT_CONTENT,
    FREE_OF_PERSONAL_DATA,
    REQUEST_KEYS,
    TASK_KEYWORDS,
    labeling_job_request,
    pre_label_attribute,
    public_content_classifiers,
    usd_amount,
)
from labeling.runtime.ground_truth.jobs import (
    ADJUSTMENT,
    BOXES,
    BOXES_ATTRIBUTE,
    BUILT_IN_FUNCTION_ACCOUNTS,
    JOB_KINDS,
    LABELING_JOB_NAME,
    PRE_LABEL_ATTRIBUTE,
    PRE_LABELED,
    PUBLIC_WORKFORCE_ACCOUNT,
    REVIEW_ATTRIBUTES,
    TASK_TYPES,
    VERIFICATION,
    RunIdentity,
    built_in_functions,
    parse_timestamp,
    public_work_team_arn,
    run_identity,
)
from labeling.runtime.ground_truth.output_manifests import (
    BoxesOutput,
    LabeledImage,
    ReviewOutput,
    failure_summary,
    parse_boxes_output,
    parse_review_output,
    require_labels,
)
from labeling.runtime.ground_truth.task_ui import (
    INSTRUCTIONS_FILE,
    LABEL_CATEGORIES_FILE,
    TASK_UI_DIR,
    TaskUi,
    label_category_config,
    load_task_ui,
    render_task_template,
)

__all__ = [
    "ADJUSTMENT",
    "BOXES",
    "BOXES_ATTRIBUTE",
    "BUILT_IN_FUNCTION_ACCOUNTS",
    "FREE_OF_ADULT_CONTENT",
    "FREE_OF_PERSONAL_DATA",
    "INSTRUCTIONS_FILE",
    "JOB_KINDS",
    "LABELING_JOB_NAME",
    "LABEL_CATEGORIES_FILE",
    "MAX_REPORTED_PROBLEMS",
    "PRE_LABELED",
    "PRE_LABEL_ATTRIBUTE",
    "PUBLIC_WORKFORCE_ACCOUNT",
    "REQUEST_KEYS",
    "REVIEW_ATTRIBUTES",
    "TASK_KEYWORDS",
    "TASK_TYPES",
    "TASK_UI_DIR",
    "VERIFICATION",
    "BoxesOutput",
    "FailedImage",
    "LabeledImage",
    "ReviewOutput",
    "RunIdentity",
    "TaskUi",
    "built_in_functions",
    "failure_summary",
    "label_category_config",
    "labeling_job_request",
    "load_task_ui",
    "parse_boxes_output",
    "parse_review_output",
    "parse_timestamp",
    "pre_label_attribute",
    "public_content_classifiers",
    "public_work_team_arn",
    "render_task_template",
    "require_labels",
    "run_identity",
    "usd_amount",
]
