"""The `labeling:` section of config.yaml: defaults, and bad values refused with the key and the reason."""

from __future__ import annotations

from typing import Any

import pytest

from shared.config import MAX_TASK_AVAILABILITY_SECONDS, ConfigError
from tests.labeling.stage import GROUND_TRUTH, settings_with

PUBLIC = {
    "type": "public",
    "public_task_price_usd": 0.036,
    "public_content": {"free_of_personal_data": True, "free_of_adult_content": True},
}


def test_the_example_configuration():
    labeling = settings_with().labeling
    assert labeling.backend == "label_studio" and labeling.workforce is None  # what a new account can use
    assert labeling.label_studio is not None and labeling.label_studio.url == "https://label-studio.example.com"
    assert (labeling.label_studio.poll_interval_seconds, labeling.label_studio.presign_ttl_minutes) == (300, 5)
    assert labeling.pre_labels and labeling.review == "verification" and labeling.max_images_per_job == 500
    assert labeling.task_availability_lifetime_seconds == 259_200 and not labeling.adopt_existing_data
    assert MAX_TASK_AVAILABILITY_SECONDS == 291_600


def test_a_ground_truth_account_keeps_its_settings():
    labeling = settings_with(**GROUND_TRUTH).labeling
    assert labeling.workforce is not None and labeling.workforce.type == "private"
    assert labeling.effective_review_workforce == labeling.workforce  # one team does both unless configured


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"workforce": {"type": "public"}}, r"labeling\.workforce: .*public_task_price_usd is required"),
        (
            {
                "workforce": {"type": "public", "public_task_price_usd": 0.036},
                "task_availability_lifetime_seconds": 43_200,
            },
            r"labeling\.workforce: .*public_content is required for the public workforce",
        ),
        (
            {"workforce": {**PUBLIC, "public_task_price_usd": 0.05}},
            r"must be one of the prices Ground Truth accepts: 0\.036",
        ),
        (
            {
                "workforce": {
                    **PUBLIC,
                    "work_team_arn": "arn:aws:sagemaker:eu-west-1:111111111111:workteam/private-crowd/t",
                }
            },
            r"work_team_arn applies to a private workforce only",
        ),
        ({"workforce": {"type": "private"}}, r"work_team_arn is required for a private workforce"),
        ({"workforce": PUBLIC}, r"at most 43200 \(12 hours\) when the public crowd works on the tasks"),
        ({"task_availability_lifetime_seconds": 864_000}, r"at most 291600: a round runs two Ground Truth jobs"),
        ({"task_time_limit_seconds": 7200, "task_availability_lifetime_seconds": 3600}, r"must not exceed"),
        ({"review": "both"}, r"labeling\.review: Input should be 'verification' or 'adjustment'"),
        ({"seed_labels_file": "/etc/labels.jsonl"}, r"labeling\.seed_labels_file: .*inside the repository"),
        ({"seed_labels_file": "labels.parquet"}, r"labeling\.seed_labels_file: .*\.csv or \.jsonl"),
        ({"max_concurrent_tasks": 6000}, r"labeling\.max_concurrent_tasks: Input should be less than or equal to 5000"),
        ({"adopt_existing_data": "maybe"}, r"labeling\.adopt_existing_data: Input should be a valid boolean"),
    ],
)
def test_bad_labeling_settings_are_refused_with_the_reason(changes: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=message):
        settings_with(**changes)


def test_a_public_crowd_with_short_tasks_and_a_separate_review_team():
    labeling = settings_with(
        workforce=PUBLIC,
        task_availability_lifetime_seconds=43_200,
        review_workforce={
            "type": "private",
            "work_team_arn": "arn:aws:sagemaker:eu-west-1:111111111111:workteam/private-crowd/r",
        },
    ).labeling
    assert labeling.workforce.public_task_price_usd == 0.036
    assert labeling.effective_review_workforce.work_team_arn.endswith("private-crowd/r")
