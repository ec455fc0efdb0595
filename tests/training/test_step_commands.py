"""The SageMaker jobs' entry points (`python -m training.steps.cli ...`) on the folders and S3 layout they get."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from training.steps import cli
from training.steps.dataset import write_offline_store
from training.steps.evaluate import read_model_archive
from training.steps.prepare import PreparedDataset
from training.steps.train import TrainingError

GATE = ["--map50-95-threshold", "0.5", "--regression-margin", "0.02"]
NO_CHAMPION = ["--champion-package", "none", "--champion-model-url", "none", "--quantize-int8", "false"]
MINIMUMS = ["--min-validation-images", "15", "--min-test-images", "30", "--min-test-defects", "20"]


@mock_aws
def test_prepare_recreates_the_dataset_from_s3_at_the_recorded_versions(source, tmp_path):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="data-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_bucket_versioning(Bucket="data-bucket", VersioningConfiguration={"Status": "Enabled"})
    records = []
    for sample, record in zip(source.samples, source.records, strict=True):
        key = f"raw-images/{sample.path.name}"
        s3.put_object(Bucket="data-bucket", Key=key, Body=sample.path.read_bytes())
        records.append(type(record)(**{**record.__dict__, "image_uri": f"s3://data-bucket/{key}"}))
    parquet = write_offline_store(records, tmp_path / "store")
    s3.put_object(Bucket="data-bucket", Key="feature-store/data/labels.parquet", Body=parquet.read_bytes())

    export = ["export", "--offline-store", "s3://data-bucket/feature-store/data", "--class-names", "scratch"]
    assert cli.main([*export, "--min-images", "10", "--output", str(tmp_path / "export")]) == 0
    # A newer version of one image appears later: the dataset still recreates the one it recorded.
    changed = source.samples[0]
    s3.put_object(Bucket="data-bucket", Key=f"raw-images/{changed.path.name}", Body=source.samples[1].path.read_bytes())

    prepare = ["prepare", "--manifest", str(tmp_path / "export"), "--output", str(tmp_path / "dataset")]
    prepare += ["--min-validation-images", "3", "--min-test-images", "3", "--min-test-defects", "1"]
    assert cli.main([*prepare, "--validation-fraction", "0.15", "--test-fraction", "0.15"]) == 0
    prepared = PreparedDataset.load(tmp_path / "dataset")
    assert sum(prepared.counts.values()) == 24
    uri = f"s3://data-bucket/raw-images/{changed.path.name}"
    split = prepared.splits[uri]
    (restored,) = (tmp_path / "dataset" / "images" / split).glob(f"{changed.path.stem}-*")
    assert restored.read_bytes() == changed.path.read_bytes()


@mock_aws
def test_train_reads_sagemaker_hyperparameters_and_downloads_pretrained_weights(tiny_model, tmp_path, capsys):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="model-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_object(Bucket="model-bucket", Key="pretrained/tiny.pt", Body=tiny_model.run.weights.read_bytes())
    hyperparameters = tmp_path / "config" / "hyperparameters.json"
    hyperparameters.parent.mkdir()
    values = {  # SageMaker writes every value as a string
        "model_size": "n",
        "epochs": "1",
        "image_size": "64",
        "batch_size": "16",
        "patience": "5",
        "optimizer": "AdamW",
        "learning_rate": "0.002",
        "augmentation": json.dumps({"flipud": 0.5, "mosaic": 1.0, "close_mosaic": 0}),
        "onnx_opset": "17",
        "pretrained_weights": "s3://model-bucket/pretrained/tiny.pt",
        "seed": "0",
        "sagemaker_program": "training/steps/job.py",  # script mode's own: not the step's business
    }
    hyperparameters.write_text(json.dumps(values))
    arguments = ["train", "--hyperparameters", str(hyperparameters), "--dataset", str(tiny_model.run.prepared.root)]
    arguments += ["--model-dir", str(tmp_path / "model"), "--checkpoints", str(tmp_path / "ckpt")]
    assert cli.main([*arguments, "--work", str(tmp_path / "work"), "--workers", "0"]) == 0
    summary = json.loads((tmp_path / "model" / "training.json").read_text())
    assert summary["config"]["epochs"] == 1 and summary["config"]["image_size"] == 64
    assert summary["config"]["pretrained_weights"] == str(tmp_path / "work" / "pretrained.pt")
    assert summary["config"]["augmentation"] == {"flipud": 0.5, "mosaic": 1.0, "close_mosaic": 0.0}
    assert (summary["config"]["optimizer"], summary["config"]["learning_rate"]) == ("AdamW", 0.002)
    assert (tmp_path / "model" / "model.onnx").is_file() and (tmp_path / "model" / "model.pt").is_file()

    # A hyperparameter the pipeline forgot is named, never replaced by a guess.
    del values["patience"], values["augmentation"]
    hyperparameters.write_text(json.dumps(values))
    assert cli.main([*arguments, "--work", str(tmp_path / "work"), "--workers", "0"]) == 1
    assert "hyperparameter(s) missing: patience, augmentation" in capsys.readouterr().err

    with pytest.raises(TrainingError, match=r"cannot read the pretrained weights s3://model-bucket/pretrained/no\.pt"):
        cli.download_weights(s3, "s3://model-bucket/pretrained/no.pt", tmp_path / "w.pt")


def test_evaluate_unpacks_the_training_output_and_writes_report_and_archive(tiny_model, tmp_path):
    model_dir = tiny_model.run.output / "work" / "model"
    training_output = tmp_path / "model"
    training_output.mkdir()
    with tarfile.open(training_output / "model.tar.gz", "w:gz") as archive:  # as SageMaker packs /opt/ml/model
        for name in ("model.onnx", "model.pt", "training.json"):
            archive.add(model_dir / name, arcname=name)
    arguments = ["evaluate", "--model", str(training_output), "--dataset", str(tiny_model.run.prepared.root)]
    arguments += ["--evaluation-output", str(tmp_path / "evaluation"), "--package-output", str(tmp_path / "package")]
    arguments += ["--confidence-threshold", "0.3", "--iou-threshold", "0.5", "--work", str(tmp_path / "work")]
    arguments += [*GATE, *NO_CHAMPION]  # as the lookup answers
    assert cli.main(arguments) == 0
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert report["input_size"] == 96  # what the model was trained and exported at (training.json)
    assert (report["confidence_threshold"], report["iou_threshold"]) == (0.3, 0.5)
    assert report["champion"] is None and report["gate"]["verdict"] in ("register", "fail")
    assert (tmp_path / "evaluation" / "report" / "index.html").is_file()
    manifest, _, names = read_model_archive(tmp_path / "package" / "model.tar.gz")
    assert (manifest.confidence_threshold, manifest.iou_threshold, manifest.input_size) == (0.3, 0.5, 96)
    assert {"evaluation.json", "training.json", "dataset.json"} <= set(names)


@mock_aws
def test_evaluate_fetches_the_champion_from_s3_and_names_it_when_it_cannot(tiny_model, tmp_path, capsys):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="models", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_object(Bucket="models", Key="pipeline-runs/e0/package/model.tar.gz", Body=tiny_model.archive.read_bytes())
    s3.put_object(Bucket="models", Key="pipeline-runs/e9/package/model.tar.gz", Body=b"not an archive")
    package = "arn:aws:sagemaker:eu-west-1:123456789012:model-package/tag-inspect-scratch-detector/7"
    arguments = ["evaluate", "--model", str(tiny_model.run.output / "work" / "model")]
    arguments += ["--dataset", str(tiny_model.run.prepared.root), "--confidence-threshold", "0.25"]
    arguments += ["--iou-threshold", "0.45", *GATE, "--champion-package", package, "--quantize-int8", "false"]
    outputs = ["--evaluation-output", str(tmp_path / "evaluation"), "--package-output", str(tmp_path / "package")]
    good = [*arguments, "--champion-model-url", "s3://models/pipeline-runs/e0/package/model.tar.gz"]
    assert cli.main([*good, *outputs, "--work", str(tmp_path / "work")]) == 0
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert report["champion"]["package"] == package
    # the same model on the same labels: nothing to register
    assert report["gate"]["verdict"] == "no_change" and report["comparison"]["difference"]["mAP50-95"] == 0.0

    for url, problem in (
        ("s3://models/pipeline-runs/e9/package/model.tar.gz", "cannot be read"),
        ("s3://models/pipeline-runs/missing/model.tar.gz", "cannot be read from s3://models/pipeline-runs/missing"),
    ):
        assert cli.main([*arguments, "--champion-model-url", url, *outputs, "--work", str(tmp_path / "w2")]) == 1
        assert f"evaluate: the approved model {package} {problem}" in capsys.readouterr().err


def test_evaluate_without_a_trained_model_fails_with_the_reason(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    arguments = ["evaluate", "--model", str(tmp_path / "model"), "--dataset", str(tmp_path)]
    arguments += ["--confidence-threshold", "0.3", "--iou-threshold", "0.5", *GATE, *NO_CHAMPION]
    assert cli.main([*arguments, "--work", str(tmp_path)]) == 1
    assert "no model.tar.gz from the training step" in capsys.readouterr().err


def test_every_step_the_pipeline_runs_exists_in_the_command_line():
    parser = cli.parser()
    for step in ("export", "prepare", "train", "evaluate"):
        assert parser.parse_args([step, *_required(step)]).step == step


def _required(step: str) -> list[str]:
    return {
        "export": ["--feature-group", "g", "--class-names", "a", "--min-images", "1"],
        "prepare": ["--validation-fraction", "0.1", "--test-fraction", "0.1", *MINIMUMS],
        "train": [],
        "evaluate": ["--confidence-threshold", "0.25", "--iou-threshold", "0.45", *GATE, *NO_CHAMPION],
    }[step]


def test_failure_files_are_written_only_inside_a_sagemaker_container(tmp_path, monkeypatch):
    inside, outside = tmp_path / "output" / "failure", tmp_path / "missing" / "message"
    (tmp_path / "output").mkdir()
    monkeypatch.setattr(cli, "FAILURE_FILES", (inside, outside))
    cli.report_failure("train: " + "x" * 2000)
    assert inside.read_text().startswith("train: x") and len(inside.read_text()) == 1000
    assert not outside.parent.exists()


def test_the_containers_get_ultralytics_and_onnx_pinned_at_the_versions_the_tests_ran_with():
    """requirements.txt is what the bootstrap installs in every job: exact pins, the versions tested here."""
    import re
    from importlib import metadata

    pins = {}
    for raw in (Path(cli.__file__).parent / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][A-Za-z0-9.]*)", line)
            assert match, f"training/steps/requirements.txt: {line!r} is not pinned as name==version"
            pins[match[1].lower()] = match[2]
    assert {"ultralytics", "onnx", "onnxruntime", "onnxslim", "pyarrow"} <= set(pins)
    assert "torch" not in pins and "torchvision" not in pins  # the container image brings its own build
    for name, version in pins.items():
        assert metadata.version(name) == version, f"{name}: tests ran with {metadata.version(name)}, jobs get {version}"


# What the AWS PyTorch training images (pytorch-training:2.x, the configured training and processing
# images) install themselves: PyTorch and its dependencies, their conda set (numpy, scipy, Pillow, PyYAML,
# requests, psutil, packaging, ...), OpenCV (opencv-python with libGL), matplotlib (through fastai and
# seaborn) and the SageMaker toolkits. Everything else a step needs must come pinned from requirements.txt.
IMAGE_PACKAGES = {
    "torch", "torchvision", "pillow", "pyyaml", "requests", "psutil", "packaging", "scipy", "sympy",
    "typing-extensions", "idna", "certifi", "charset-normalizer", "urllib3", "opencv-python", "matplotlib",
    "contourpy", "cycler", "fonttools", "kiwisolver", "pyparsing", "python-dateutil", "six",
}  # fmt: skip


def test_everything_the_steps_install_beyond_the_image_is_pinned():
    """Transitive dependencies must not float: a new release of one would change the jobs' environment."""
    from tests.helpers.requirements import pinned_names, requirements_closure

    pinned = pinned_names(Path(cli.__file__).parent / "requirements.txt")
    needed = requirements_closure(pinned, provided=IMAGE_PACKAGES)
    assert needed - pinned == set(), f"not pinned in training/steps/requirements.txt: {sorted(needed - pinned)}"


def test_the_step_code_imports_nothing_the_container_lacks():
    """The container gets the step packages and shared/contracts.py only (and requirements.txt)."""
    from training.training_pipeline import STEP_PACKAGES

    steps = Path(cli.__file__).parent
    allowed = {"shared.contracts", *(package.removesuffix(".py").replace("/", ".") for package in STEP_PACKAGES)}
    assert allowed == {"shared.contracts", "training.steps", "shared.runtime.model_registry"}
    for module in steps.glob("*.py"):
        for line in module.read_text().splitlines():
            words = line.strip().split()
            if len(words) >= 2 and words[0] in ("from", "import") and words[1].split(".")[0] in ("training", "shared"):
                assert any(words[1].startswith(prefix) for prefix in allowed), f"{module.name}: {line.strip()}"
