"""Ground Truth: job names, CreateLabelingJob requests (Stubber-validated), worker files, output manifests."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import boto3
import botocore.session
import pytest
from botocore.stub import Stubber

from labeling.runtime import ground_truth as gt
from labeling.runtime.config import Workforce
from labeling.runtime.errors import ConfigurationError, ManifestError, NoLabelsError
from tests.labeling.conftest import make_config

UI = gt.load_task_ui(["scratch"])
CLASSES = ("scratch",)


# --------------------------------------------------------------------------------------------------
# Names and built-in functions
# --------------------------------------------------------------------------------------------------


def _documented_functions() -> dict[str, set[str]]:
    """Built-in function ARNs per task type, as botocore's SageMaker model documents them."""
    model = botocore.session.get_session().get_service_model("sagemaker")
    text = model.shape_for("HumanTaskConfig").members["PreHumanTaskLambdaArn"].documentation
    text += model.shape_for("AnnotationConsolidationConfig").members["AnnotationConsolidationLambdaArn"].documentation
    found: dict[str, set[str]] = {}
    for arn, kind in re.findall(r"(arn:aws:lambda:[a-z0-9-]+:\d{12}:function:((?:PRE|ACS)-[A-Za-z0-9]+))", text):
        found.setdefault(kind, set()).add(arn)
    return found


@pytest.mark.parametrize("kind", gt.JOB_KINDS)
def test_built_in_function_table_matches_the_service_documentation(kind):
    documented = _documented_functions()
    pre, consolidation = zip(
        *(gt.built_in_functions(kind, region) for region in gt.BUILT_IN_FUNCTION_ACCOUNTS), strict=True
    )
    assert set(pre) <= documented[f"PRE-{gt.TASK_TYPES[kind]}"]
    assert set(consolidation) <= documented[f"ACS-{gt.TASK_TYPES[kind]}"]
    # every region the documentation lists for the task type is in the table
    regions = {arn.split(":")[3] for arn in documented[f"PRE-{gt.TASK_TYPES[kind]}"]}
    assert regions == set(gt.BUILT_IN_FUNCTION_ACCOUNTS)


def test_regions_without_built_in_functions_are_refused():
    with pytest.raises(ConfigurationError, match=r"not offered in sa-east-1; deploy the labeling app to one of: ap-"):
        gt.built_in_functions(gt.BOXES, "sa-east-1")


@pytest.mark.parametrize(
    "execution_name",
    [
        "e5a2c1f0-1234-4cde-8f00-0123456789ab",  # how CodePipeline names executions
        "weekly_round.2026-11-22@night!",
        "x" * 80,
        "unicodé-名前",
    ],
)
def test_job_names_are_valid_for_sagemaker_whatever_the_execution_is_called(execution_name):
    arn = f"arn:aws:states:eu-west-1:123456789012:execution:tag-inspect-labeling:{execution_name}"
    run = gt.run_identity(
        project_prefix="a-twenty-char-prefix",
        jobs_prefix="labeling-jobs/",
        execution_arn=arn,
        start_time="2026-11-22T03:15:00.123Z",
    )
    for name in (run.boxes_job, run.review_job):
        assert gt.LABELING_JOB_NAME.fullmatch(name) and len(name) <= 63
    assert run.prefix == f"labeling-jobs/{run.id}/"
    assert run.id.startswith("20261122-031500-")


def test_job_names_differ_between_executions_and_are_stable_within_one():
    def run(arn: str, start: str) -> gt.RunIdentity:
        return gt.run_identity(
            project_prefix="tag-inspect", jobs_prefix="labeling-jobs/", execution_arn=arn, start_time=start
        )

    base = "arn:aws:states:eu-west-1:123456789012:execution:tag-inspect-labeling:"
    first = run(base + "a", "2026-11-22T03:15:00.123Z")
    assert first == run(base + "a", "2026-11-22T03:15:00.123Z")  # every step of one execution agrees
    assert first.boxes_job != run(base + "b", "2026-11-22T03:15:00.123Z").boxes_job  # same second, other execution
    assert first.boxes_job != run(base + "a", "2027-02-20T03:15:00.123Z").boxes_job  # a name reused months later
    # Step Functions in AWS and moto write the start time differently; both are understood
    assert run(base + "a", "2026-11-22T03:15:00.123000+00:00").id.startswith("20261122-031500-")


def test_a_prefix_too_long_for_job_names_is_refused():
    with pytest.raises(ConfigurationError, match="not valid for SageMaker"):
        gt.run_identity(
            project_prefix="p" * 40,
            jobs_prefix="labeling-jobs/",
            execution_arn="arn:x",
            start_time="2026-11-22T03:15:00Z",
        )


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------


def _request(kind: str, **config_changes: object) -> dict[str, object]:
    return gt.labeling_job_request(
        kind,
        config=make_config(**config_changes),
        region="eu-west-1",
        job_name="tag-inspect-boxes-20261122-031500-1a2b3c4d",
        manifest_uri="s3://bucket/labeling-jobs/r/boxes/input.manifest",
        output_uri="s3://bucket/labeling-jobs/r/boxes/output/",
        template_uri="s3://bucket/labeling-jobs/r/boxes/template.liquid.html",
        categories_uri="s3://bucket/labeling-jobs/r/boxes/label-categories.json",
    )


def _stubbed_create(request: dict[str, object]) -> None:
    """CreateLabelingJob through a Stubber: botocore validates every parameter against the real model."""
    client = boto3.client("sagemaker", region_name="eu-west-1")
    with Stubber(client) as stubber:
        stubber.add_response(
            "create_labeling_job", {"LabelingJobArn": "arn:aws:sagemaker:eu-west-1:1:labeling-job/x"}, request
        )
        client.create_labeling_job(**request)
        stubber.assert_no_pending_responses()


@pytest.mark.parametrize("kind", gt.JOB_KINDS)
def test_requests_for_a_private_team_are_valid_create_labeling_job_calls(kind):
    request = _request(kind)
    _stubbed_create(request)
    assert tuple(request) == gt.REQUEST_KEYS
    human = request["HumanTaskConfig"]
    assert human["WorkteamArn"].endswith(":workteam/private-crowd/tag-inspectors")
    assert human["PreHumanTaskLambdaArn"] == f"arn:aws:lambda:eu-west-1:568282634449:function:PRE-{gt.TASK_TYPES[kind]}"
    assert human["AnnotationConsolidationConfig"]["AnnotationConsolidationLambdaArn"].endswith(
        f":ACS-{gt.TASK_TYPES[kind]}"
    )
    assert "PublicWorkforceTaskPrice" not in human
    assert "DataAttributes" not in request["InputConfig"]
    first_job = kind in (gt.BOXES, gt.PRE_LABELED)  # both answer under the attribute the review reads
    assert request["LabelAttributeName"] == (gt.BOXES_ATTRIBUTE if first_job else gt.REVIEW_ATTRIBUTES[kind])
    assert request["OutputConfig"]["KmsKeyId"] == "arn:aws:kms:eu-west-1:123456789012:alias/tag-inspect-data"


@pytest.mark.parametrize("kind", gt.JOB_KINDS)
def test_task_limits_and_worker_counts_come_from_the_configuration(kind):
    request = _request(
        kind,
        task_time_limit_seconds=1_200,
        task_availability_lifetime_seconds=7_200,
        workers_per_image=3,
        max_concurrent_tasks=50,
    )
    _stubbed_create(request)
    human = request["HumanTaskConfig"]
    assert (
        human["TaskTimeLimitInSeconds"],
        human["TaskAvailabilityLifetimeInSeconds"],
        human["NumberOfHumanWorkersPerDataObject"],
        human["MaxConcurrentTaskCount"],
    ) == (1_200, 7_200, 3, 50)


def test_the_public_crowd_is_used_only_when_configured_and_then_paid_and_declared():
    public = Workforce(type="public", price_usd=0.036, free_of_personal_data=True, free_of_adult_content=True)
    request = _request(gt.BOXES, workforce=public, task_availability_lifetime_seconds=43_200)
    _stubbed_create(request)
    human = request["HumanTaskConfig"]
    assert human["WorkteamArn"] == "arn:aws:sagemaker:eu-west-1:394669845002:workteam/public-crowd/default"
    assert human["PublicWorkforceTaskPrice"] == {"AmountInUsd": {"Dollars": 0, "Cents": 3, "TenthFractionsOfACent": 6}}
    assert request["InputConfig"]["DataAttributes"]["ContentClassifiers"] == [
        "FreeOfPersonallyIdentifiableInformation",
        "FreeOfAdultContent",
    ]
    # the review job keeps its own (private) team
    review = _request(gt.VERIFICATION, workforce=public)
    assert "private-crowd" in review["HumanTaskConfig"]["WorkteamArn"]


@pytest.mark.parametrize(
    ("price", "amount"), [(0.036, (0, 3, 6)), (0.12, (0, 12, 0)), (1.08, (1, 8, 0)), (1.2, (1, 20, 0))]
)
def test_prices_in_dollars_become_ground_truth_amounts(price, amount):
    assert gt.usd_amount(price) == dict(zip(("Dollars", "Cents", "TenthFractionsOfACent"), amount, strict=True))


def test_the_job_declares_to_the_public_crowd_exactly_what_the_team_declared():
    # Images that may show adult content: Mechanical Turk is told nothing about it (its workers are warned).
    declared = Workforce(type="public", price_usd=0.036, free_of_personal_data=True, free_of_adult_content=False)
    request = _request(gt.BOXES, workforce=declared, task_availability_lifetime_seconds=43_200)
    _stubbed_create(request)
    assert request["InputConfig"]["DataAttributes"]["ContentClassifiers"] == ["FreeOfPersonallyIdentifiableInformation"]
    # A private team's job declares nothing.
    assert "DataAttributes" not in _request(gt.BOXES)["InputConfig"]


@pytest.mark.parametrize(
    ("declarations", "message"),
    [
        ({}, "needs the team's declarations free_of_personal_data and free_of_adult_content"),
        ({"free_of_personal_data": True}, "needs the team's declarations"),
        (
            {"free_of_personal_data": False, "free_of_adult_content": True},
            "personal data must not go to the public crowd",
        ),
    ],
)
def test_the_public_crowd_without_the_teams_declarations_is_refused(declarations, message):
    with pytest.raises(ConfigurationError, match=message):
        Workforce(type="public", price_usd=0.036, **declarations)


def test_a_request_without_a_role_is_refused():
    with pytest.raises(ConfigurationError, match="no Ground Truth role"):
        _request(gt.BOXES, ground_truth_role_arn="")


# --------------------------------------------------------------------------------------------------
# Worker files
# --------------------------------------------------------------------------------------------------


def test_label_categories_follow_the_configured_class_order():
    ui = gt.load_task_ui(["scratch"])
    assert gt.label_category_config(gt.BOXES, ui) == {
        "document-version": "2018-11-28",
        "labels": [{"label": "scratch"}],
    }
    assert gt.label_category_config(gt.ADJUSTMENT, ui)["labels"] == [{"label": "scratch"}]
    assert gt.label_category_config(gt.VERIFICATION, ui)["labels"] == [{"label": ui.approve}, {"label": ui.reject}]


def test_every_configured_class_needs_worker_instructions(tmp_path: Path):
    with pytest.raises(ConfigurationError, match="no description for class\\(es\\) dent"):
        gt.load_task_ui(["scratch", "dent"])
    stale = tmp_path / "label-categories.json"
    stale.write_text(
        json.dumps({"classes": {"scratch": "x", "stain": "y"}, "verification": {"approve": "a", "reject": "b"}})
    )
    with pytest.raises(ConfigurationError, match=r"not in project\.class_names: stain"):
        gt.load_task_ui(["scratch"], stale)
    same = tmp_path / "same.json"
    same.write_text(json.dumps({"classes": {"scratch": "x"}, "verification": {"approve": "a", "reject": "a"}}))
    with pytest.raises(ConfigurationError, match="two different"):
        gt.load_task_ui(["scratch"], same)


@pytest.mark.parametrize("kind", gt.JOB_KINDS)
def test_templates_are_complete_crowd_forms(kind):
    template = gt.render_task_template(kind, UI)
    assert template.startswith('<script src="https://assets.crowd.aws/crowd-html-elements.js"></script>')
    assert "<crowd-form>" in template and "</crowd-form>" in template
    assert not re.search(r"\$[a-z_]", template), "a placeholder was left unfilled"
    assert "{{ task.input.taskObject | grant_read_access }}" in template
    assert "A thin line cut or rubbed into the metal" in template  # the class's worker instructions
    if kind == gt.BOXES:
        assert 'name="boundingBox"' in template and "initial-value" not in template
    elif kind == gt.PRE_LABELED:
        # workers start from the model's boxes, read from the pre-label attribute of the manifest line
        assert f"task.input.manifestLine.{gt.PRE_LABEL_ATTRIBUTE}.annotations" in template
        assert f"task.input.manifestLine.{gt.PRE_LABEL_ATTRIBUTE}-metadata.class-map[class_id]" in template
    else:
        # the review shows the labeling job's boxes, read from the manifest line by Liquid
        assert f"task.input.manifestLine.{gt.BOXES_ATTRIBUTE}.annotations" in template
        assert f"task.input.manifestLine.{gt.BOXES_ATTRIBUTE}-metadata.class-map[class_id]" in template


def test_verification_answers_in_the_template_are_the_label_categories():
    template = gt.render_task_template(gt.VERIFICATION, UI)
    categories = re.search(r"categories='([^']*)'", template)
    assert categories is not None
    assert json.loads(html.unescape(categories.group(1))) == [
        item["label"] for item in gt.label_category_config(gt.VERIFICATION, UI)["labels"]
    ]


# --------------------------------------------------------------------------------------------------
# Output manifests (Ground Truth's formats, as in the developer guide's examples)
# --------------------------------------------------------------------------------------------------

BOXES_LINE = {
    "source-ref": "s3://bucket/raw-images/a.jpg",
    "defect-boxes": {
        "image_size": [{"width": 500, "height": 400, "depth": 3}],
        "annotations": [
            {"class_id": 0, "left": 111, "top": 134, "width": 61, "height": 128},
            {"class_id": 0, "left": 480, "top": 390, "width": 30, "height": 30},  # runs over the edge
        ],
    },
    "defect-boxes-metadata": {
        "objects": [{"confidence": 0.8}, {"confidence": 0.9}],
        "class-map": {"0": "scratch"},
        "type": "groundtruth/object-detection",
        "human-annotated": "yes",
        "creation-date": "2018-10-18T22:18:13.527256",
        "job-name": "labeling-job/tag-inspect-boxes-x",
    },
}
FAILED_LINE = {
    "source-ref": "s3://bucket/raw-images/b.jpg",
    "defect-boxes-metadata": {"failure-reason": "ClientError: task expired", "human-annotated": "yes"},
}


def _manifest(*lines: object) -> str:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)


def test_bounding_box_output_gives_pixel_boxes_clipped_to_the_image():
    output = gt.parse_boxes_output(_manifest(BOXES_LINE, FAILED_LINE), class_names=CLASSES)
    (item,) = output.labeled
    assert (item.image_uri, item.width, item.height) == ("s3://bucket/raw-images/a.jpg", 500, 400)
    assert [(a.x1, a.y1, a.x2, a.y2) for a in item.annotations] == [(111, 134, 172, 262), (480, 390, 500, 400)]
    assert item.created == "2018-10-18T22:18:13.527Z" and item.job_name == "tag-inspect-boxes-x"
    assert item.raw == json.dumps(BOXES_LINE)
    assert [(f.line, f.image_uri, f.reason) for f in output.failed] == [
        (2, "s3://bucket/raw-images/b.jpg", "ClientError: task expired")
    ]


def test_an_image_with_no_defect_is_a_valid_answer():
    line = {**BOXES_LINE, "defect-boxes": {"image_size": [{"width": 5, "height": 4, "depth": 3}], "annotations": []}}
    line["defect-boxes-metadata"] = {k: v for k, v in BOXES_LINE["defect-boxes-metadata"].items() if k != "class-map"}
    (item,) = gt.parse_boxes_output(_manifest(line), class_names=CLASSES).labeled
    assert item.annotations == () and not item.problems


def test_a_box_with_no_area_in_the_image_is_a_problem_not_a_silent_drop():
    line = json.loads(json.dumps(BOXES_LINE))
    line["defect-boxes"]["annotations"].append({"class_id": 0, "left": 600, "top": 10, "width": 20, "height": 20})
    (item,) = gt.parse_boxes_output(_manifest(line), class_names=CLASSES).labeled
    assert len(item.annotations) == 2 and item.problems and "box 2" in item.problems[0]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"line 2: not a JSON object"),
        ({"defect-boxes": {}}, r"line 2: source-ref must be the image's s3:// URI"),
        (
            {**BOXES_LINE, "source-ref": "s3://bucket/raw-images/z.jpg", "defect-boxes": {"annotations": []}},
            r"image_size",
        ),
        (
            {
                **BOXES_LINE,
                "source-ref": "s3://bucket/raw-images/z.jpg",
                "defect-boxes-metadata": {**BOXES_LINE["defect-boxes-metadata"], "class-map": {"0": "dent"}},
            },
            r"class-map names class 0 'dent', but the configured class 0 is 'scratch'",
        ),
        (
            {
                **BOXES_LINE,
                "source-ref": "s3://bucket/raw-images/z.jpg",
                "defect-boxes": {
                    **BOXES_LINE["defect-boxes"],
                    "annotations": [{"class_id": 1, "left": 1, "top": 1, "width": 9, "height": 9}],
                },
                "defect-boxes-metadata": {
                    **BOXES_LINE["defect-boxes-metadata"],
                    "class-map": {"0": "scratch", "1": "dent"},
                },
            },
            r"line 2: defect-boxes\.annotations\[0\]\.class_id 1 is not one of the 1 classes",
        ),
        (
            {
                **BOXES_LINE,
                "source-ref": "s3://bucket/raw-images/z.jpg",
                "defect-boxes": {
                    **BOXES_LINE["defect-boxes"],
                    "annotations": [{"class_id": -1, "left": 1, "top": 1, "width": 9, "height": 9}],
                },
            },
            r"line 2: defect-boxes\.annotations\[0\]\.class_id -1 is not one of the 1 classes",
        ),
        (BOXES_LINE, r"line 2: s3://bucket/raw-images/a.jpg is also on line 1"),
        (
            {
                **BOXES_LINE,
                "source-ref": "s3://bucket/raw-images/z.jpg",
                "defect-boxes-metadata": {"class-map": {"0": "scratch"}},
            },
            r"no creation-date",
        ),
    ],
    ids=[
        "not-json",
        "no-source",
        "no-size",
        "wrong-class",
        "class-id-out-of-range",
        "negative-class-id",
        "duplicate",
        "no-date",
    ],
)
def test_malformed_output_lines_are_named_with_their_line_number(line, message):
    with pytest.raises(ManifestError, match=message) as raised:
        gt.parse_boxes_output(_manifest(BOXES_LINE, line), class_names=CLASSES, source="s3://b/out.manifest")
    assert "nothing was written" in str(raised.value) and str(raised.value).startswith("s3://b/out.manifest: ")


def test_an_empty_output_manifest_is_an_error():
    with pytest.raises(ManifestError, match="the output manifest is empty"):
        gt.parse_boxes_output("\n\n", class_names=CLASSES)


def test_a_job_that_labeled_nothing_ends_the_round():
    output = gt.parse_boxes_output(_manifest(FAILED_LINE), class_names=CLASSES)
    with pytest.raises(
        NoLabelsError, match=r"job j returned no boxes for any of its 1 image\(s\): 1 x ClientError: task expired"
    ):
        gt.require_labels(output, job_name="j")


def _verified(value: object, class_name: str | None, uri: str = "s3://bucket/raw-images/a.jpg") -> dict[str, object]:
    metadata: dict[str, object] = {
        "confidence": 0.93,
        "type": "groundtruth/label-verification",
        "job-name": "labeling-job/tag-inspect-review-x",
        "human-annotated": "yes",
        "creation-date": "2018-11-20T22:18:13.527256",
    }
    if class_name is not None:
        metadata["class-name"] = class_name
    line = {**BOXES_LINE, "source-ref": uri, "defect-boxes-verified-metadata": metadata}
    if value is not None:
        line["defect-boxes-verified"] = value
    return line


def _review(*lines: object, mode: str = gt.VERIFICATION) -> gt.ReviewOutput:
    return gt.parse_review_output(
        _manifest(*lines),
        mode=mode,
        class_names=CLASSES,
        approve=UI.approve,
        reject=UI.reject,
        boxes_job="boxes-job",
        review_job="review-job",
    )


def test_verification_output_becomes_approved_and_rejected_records():
    within = json.loads(json.dumps(BOXES_LINE))
    within["defect-boxes"]["annotations"].pop()  # only the box inside the image
    approved = {**_verified("0", UI.approve, "s3://bucket/raw-images/ok.jpg"), "defect-boxes": within["defect-boxes"]}
    rejected = _verified(1, UI.reject, "s3://bucket/raw-images/bad.jpg")
    no_verdict = {
        **BOXES_LINE,
        "source-ref": "s3://bucket/raw-images/late.jpg",
        "defect-boxes-verified-metadata": {"failure-reason": "ClientError: expired"},
    }
    output = _review(approved, rejected, no_verdict)
    ok, bad = output.records
    assert (ok.image_uri, ok.review_status, ok.labeling_job) == (
        "s3://bucket/raw-images/ok.jpg",
        "approved",
        "boxes-job",
    )
    assert (bad.review_status, len(bad.annotations)) == ("rejected", 2)  # the rejected boxes are kept, as rejected
    assert ok.event_time == "2018-11-20T22:18:13.527Z"  # the reviewer's verdict time
    assert [f.image_uri for f in output.failed] == ["s3://bucket/raw-images/late.jpg"]
    assert output.summary() == {
        "reviewed": 2,
        "approved": 1,
        "rejected": 1,
        "rejected_for_bad_boxes": 0,
        "adjusted": 0,
        "no_verdict": 1,
    }


def test_a_verification_that_rejects_everything_writes_only_rejected_records():
    output = _review(*(_verified("1", UI.reject, f"s3://bucket/raw-images/{i}.jpg") for i in range(3)))
    assert [r.review_status for r in output.records] == ["rejected"] * 3


def test_approved_boxes_with_no_area_in_the_image_are_rejected():
    line = json.loads(json.dumps(_verified("0", UI.approve)))
    line["defect-boxes"]["annotations"].append({"class_id": 0, "left": 900, "top": 0, "width": 5, "height": 5})
    output = _review(line)
    assert output.records[0].review_status == "rejected" and output.rejected_for_bad_boxes == 1


@pytest.mark.parametrize(
    ("value", "class_name", "message"),
    [
        ("0", UI.reject, "disagree"),
        ("7", None, "is not the index of a verification answer"),
        (None, "maybe", "is neither"),
        (None, None, "neither a value nor a class-name"),
    ],
)
def test_inconsistent_verdicts_are_malformed(value, class_name, message):
    with pytest.raises(ManifestError, match=message):
        _review(_verified(value, class_name))


def test_a_verdict_without_boxes_is_malformed():
    line = _verified("0", UI.approve)
    del line["defect-boxes"], line["defect-boxes-metadata"]
    with pytest.raises(ManifestError, match="a verdict for an image without boxes"):
        _review(line)


def test_adjustment_output_gives_the_corrected_boxes_as_approved():
    adjusted = {
        **BOXES_LINE,
        "defect-boxes-adjusted": {
            "image_size": [{"width": 500, "height": 400, "depth": 3}],
            "annotations": [{"class_id": 0, "left": 110, "top": 135, "width": 61, "height": 128}],
        },
        "defect-boxes-adjusted-metadata": {
            "objects": [{"confidence": 0.8}],
            "class-map": {"0": "scratch"},
            "type": "groundtruth/object-detection",
            "human-annotated": "yes",
            "creation-date": "2018-11-20T22:18:13.527256",
            "job-name": "labeling-job/adjust-bounding-boxes",
            "adjustment-status": "adjusted",
        },
    }
    output = _review(adjusted, mode=gt.ADJUSTMENT)
    (record,) = output.records
    assert record.review_status == "approved" and record.labeling_job == "review-job"
    assert [(a.x1, a.y1, a.x2, a.y2) for a in record.annotations] == [(110, 135, 171, 263)]
    assert output.adjusted == 1
