"""CodeCommit pushes start an app's asset pipeline only when they touch the app's paths."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from shared.pipelines import trigger_paths
from shared.runtime.path_filter import decide_and_start, matches

OLD, NEW = "a" * 40, "b" * 40


@pytest.mark.parametrize(
    ("app", "path", "expected"),
    [
        ("labeling", "labeling/workflow/runtime/find.py", True),
        ("labeling", "training/steps/train.py", False),
        ("labeling", "tests/training/test_train.py", False),
        ("training", "training/steps/train.py", True),
        ("training", "tests/training/test_train.py", True),
        ("edge_deployment", "training/steps/train.py", False),
        ("edge_deployment", "shared/names.py", True),
        ("edge_deployment", "config.yaml", True),
        ("training", "README.md", False),
        ("training", "labeling/README.md", False),
        ("training", "tests/e2e/test_loop.py", False),
    ],
)
def test_trigger_paths(app, path, expected):
    includes, excludes = trigger_paths(app)
    assert matches(path, includes=includes, excludes=excludes) is expected


def _clients():
    codecommit = boto3.client("codecommit", region_name="eu-west-1")
    codepipeline = boto3.client("codepipeline", region_name="eu-west-1")
    return codecommit, codepipeline


def _event(old=OLD):
    return {"detail": {"repositoryName": "edge-inspection", "commitId": NEW, "oldCommitId": old}}


def _differences(*paths, next_token=None):
    response = {
        "differences": [{"afterBlob": {"path": p, "blobId": "1", "mode": "100644"}, "changeType": "M"} for p in paths]
    }
    if next_token:
        response["NextToken"] = next_token
    return response


def test_a_push_touching_only_another_app_starts_nothing():
    codecommit, codepipeline = _clients()
    includes, excludes = trigger_paths("labeling")
    with Stubber(codecommit) as cc, Stubber(codepipeline) as cp:
        cc.add_response(
            "get_differences",
            _differences("training/steps/train.py", "tests/training/test_x.py"),
            {"repositoryName": "edge-inspection", "beforeCommitSpecifier": OLD, "afterCommitSpecifier": NEW},
        )
        result = decide_and_start(
            _event(),
            codecommit=codecommit,
            codepipeline=codepipeline,
            pipeline_name="p",
            source_action_name="Source",
            includes=includes,
            excludes=excludes,
        )
        cc.assert_no_pending_responses()  # the push's paths were read
        cp.assert_no_pending_responses()
    assert result == {"started": False}


def test_a_matching_path_on_a_later_page_starts_the_pipeline_at_the_pushed_commit():
    codecommit, codepipeline = _clients()
    includes, excludes = trigger_paths("training")
    with Stubber(codecommit) as cc, Stubber(codepipeline) as cp:
        cc.add_response("get_differences", _differences("labeling/a.py", next_token="t1"))
        cc.add_response("get_differences", _differences("training/steps/train.py"))
        cp.add_response(
            "start_pipeline_execution",
            {"pipelineExecutionId": "e-1"},
            {
                "name": "tag-inspect-training-asset-pipeline",
                "sourceRevisions": [{"actionName": "Source", "revisionType": "COMMIT_ID", "revisionValue": NEW}],
            },
        )
        result = decide_and_start(
            _event(),
            codecommit=codecommit,
            codepipeline=codepipeline,
            pipeline_name="tag-inspect-training-asset-pipeline",
            source_action_name="Source",
            includes=includes,
            excludes=excludes,
        )
        cc.assert_no_pending_responses()
    assert result == {"started": True, "path": "training/steps/train.py", "executionId": "e-1"}


def test_a_new_branch_compares_against_nothing():
    codecommit, codepipeline = _clients()
    with Stubber(codecommit) as cc, Stubber(codepipeline) as cp:
        cc.add_response(
            "get_differences",
            _differences("shared/names.py"),
            {"repositoryName": "edge-inspection", "afterCommitSpecifier": NEW},
        )
        cp.add_response("start_pipeline_execution", {"pipelineExecutionId": "e-2"})
        result = decide_and_start(
            _event(old="0" * 40),
            codecommit=codecommit,
            codepipeline=codepipeline,
            pipeline_name="p",
            source_action_name="Source",
            includes=["**"],
            excludes=[],
        )
        cc.assert_no_pending_responses()
        cp.assert_no_pending_responses()
    assert result == {"started": True, "path": "shared/names.py", "executionId": "e-2"}


def test_an_event_that_is_not_a_reference_change_is_refused():
    codecommit, codepipeline = _clients()
    with pytest.raises(ValueError, match=r"without detail\.commitId"):
        decide_and_start(
            {"detail": {"repositoryName": "r"}},
            codecommit=codecommit,
            codepipeline=codepipeline,
            pipeline_name="p",
            source_action_name="Source",
            includes=["**"],
        )


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("**/*.md", "README.md", True),
        ("**/*.md", "labeling/docs/guide.md", True),
        ("**/*.md", "labeling/guide.mdx", False),
        ("training/**", "training/steps/x.py", True),
        ("training/**", "training-notes.txt", False),
        ("*.py", "app.py", True),
        ("*.py", "shared/names.py", False),
        ("requirements?.txt", "requirements1.txt", True),
    ],
)
def test_glob_semantics(pattern, path, expected):
    assert matches(path, includes=[pattern]) is expected
