"""Steps 3-4 for real: a tiny YOLOv8 trained on synthetic tags, its ONNX export, test-split evaluation, the archive.

The model is trained once per session (`tiny_model`); the resume and command-line tests train a few
more seconds each at 64 px.
"""

from __future__ import annotations

import json
import tarfile

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from shared.contracts import REQUIRED_METRICS, ModelManifest
from training import local
from training.steps.evaluate import (
    EMPTY_FRAME_RATE,
    EVALUATION_FILE,
    EvaluationReport,
    precision_recall_at,
    read_model_archive,
)
from training.steps.gate import decide
from training.steps.prepare import PreparedDataset
from training.steps.train import METRICS_PREFIX, TrainConfig, TrainingError, check_onnx_model, train_model


def anchors(size: int) -> int:
    return sum((size // stride) ** 2 for stride in (8, 16, 32))


def letterbox(path, size: int) -> np.ndarray:
    """The contract's input: RGB 0..1, aspect kept, padded with 114/255, [1, 3, S, S]."""
    image = Image.open(path).convert("RGB")
    scale = min(size / image.width, size / image.height)
    resized = image.resize((round(image.width * scale), round(image.height * scale)))
    canvas = Image.new("RGB", (size, size), (114, 114, 114))
    canvas.paste(resized, ((size - resized.width) // 2, (size - resized.height) // 2))
    return (np.asarray(canvas, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]


def test_the_archive_has_the_onnx_model_and_its_manifest_at_the_root(tiny_model, settings):
    manifest, onnx_bytes, names = read_model_archive(tiny_model.archive)
    assert names[:2] == ["model.onnx", "model.json"] and EVALUATION_FILE in names
    with tarfile.open(tiny_model.archive) as archive:
        assert all("/" not in member.name for member in archive.getmembers())
    assert manifest == tiny_model.manifest
    assert manifest.class_names == tuple(settings.project.class_names)
    assert manifest.input_size == 96
    assert (manifest.confidence_threshold, manifest.iou_threshold) == (
        settings.training.confidence_threshold,
        settings.training.iou_threshold,
    )
    assert manifest.onnx_opset == settings.training.onnx_opset
    assert manifest.dataset_version == tiny_model.run.dataset.dataset_version
    assert set(REQUIRED_METRICS) <= set(manifest.metrics)
    assert onnx_bytes == tiny_model.onnx_path.read_bytes()


def test_the_onnx_model_runs_in_onnxruntime_with_the_contracts_shapes(tiny_model):
    manifest, onnx_bytes, _ = read_model_archive(tiny_model.archive)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.name == "images" and model_input.shape == [1, 3, 96, 96]
    assert model_input.type == "tensor(float)"
    for sample in tiny_model.samples[:3]:  # held-out tags the model never saw
        (output,) = session.run(None, {"images": letterbox(sample.path, manifest.input_size)})
        assert output.shape == (1, 4 + len(manifest.class_names), anchors(96))
        assert np.isfinite(output).all()
        scores = output[0, 4:]
        assert ((scores >= 0) & (scores <= 1)).all()  # class scores, no NMS inside
    assert check_onnx_model(tiny_model.onnx_path, image_size=96, num_classes=1) == (1, 5, anchors(96))
    with pytest.raises(TrainingError, match=r"expected output \[1, 7, N\]"):
        check_onnx_model(tiny_model.onnx_path, image_size=96, num_classes=3)


def test_the_archived_onnx_model_has_the_fixed_opset_its_manifest_declares(tiny_model, settings):
    import onnx

    manifest, onnx_bytes, _ = read_model_archive(tiny_model.archive)
    model = onnx.load_from_string(onnx_bytes)
    (default_domain,) = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    assert default_domain == manifest.onnx_opset == settings.training.onnx_opset


def test_the_report_has_every_metric_measured_on_the_held_out_test_split(tiny_model):
    run = tiny_model.run
    report = EvaluationReport.from_json(json.loads(run.evaluation_path.read_text()))
    assert set(report.metrics) == {*REQUIRED_METRICS, EMPTY_FRAME_RATE}
    assert all(0.0 <= value <= 1.0 for value in report.metrics.values())
    # the share of test images with no detection at the deployment threshold (what devices compare against)
    empty_images = report.metrics[EMPTY_FRAME_RATE] * report.images
    assert abs(empty_images - round(empty_images)) < 1e-9
    raw = json.loads(run.evaluation_path.read_text())
    assert raw["gate_metric"] == {"name": "mAP50-95", "value": report.metrics["mAP50-95"]}
    assert report.split == "test"
    assert report.images == run.prepared.counts["test"]
    assert report.instances == run.prepared.boxes["test"]
    # Training never saw the test split: its dataset file lists only train and val.
    training_data = json.loads((run.output / "work" / "checkpoints" / "data.yaml").read_text())
    assert "test" not in training_data and {"train", "val"} <= set(training_data)
    assert ModelManifest.from_json(json.loads(json.dumps(run.manifest.to_json()))).metrics == report.metrics


def test_training_logged_metrics_every_epoch_for_sagemaker(tiny_model):
    summary = json.loads((tiny_model.run.output / "work" / "model" / "training.json").read_text())
    epochs = [row["epoch"] for row in summary["history"]]
    assert epochs[:2] == [1.0, 2.0]
    assert {"train_box_loss", "mAP50-95", "precision", "recall"} <= set(summary["history"][0])
    assert summary["config"]["image_size"] == 96 and summary["onnx_output_shape"] == [1, 5, anchors(96)]


def test_the_gate_verdict_is_written_with_the_run(tiny_model, settings):
    run = tiny_model.run
    verdict = json.loads(run.gate_path.read_text())
    expected = decide(
        run.evaluation.metrics["mAP50-95"],
        threshold=settings.training.map50_95_threshold,
        baseline=None,
        margin=settings.training.regression_margin,
    )
    assert verdict == expected.to_json()
    # independently of decide(): the run's own metric against the configured threshold, no baseline
    metric, threshold = run.evaluation.metrics["mAP50-95"], settings.training.map50_95_threshold
    assert (verdict["value"], verdict["threshold"]) == (metric, threshold)
    assert verdict["passed"] is (metric >= threshold) and verdict["baseline_package_arn"] is None


def test_precision_and_recall_count_only_detections_above_the_deployment_threshold():
    stats = {
        "tp": np.array([[True] * 10, [False] * 10, [True] * 10, [True] * 10]),
        "conf": np.array([0.9, 0.8, 0.3, 0.1]),
        "pred_cls": np.array([0, 0, 0, 1]),
        "target_cls": np.array([0, 0, 0, 1, 1]),
    }
    precision, recall, per_class = precision_recall_at(stats, 0.25)
    assert per_class[0] == (2 / 3, 2 / 3)  # 3 detections kept, 2 right, of 3 labeled
    assert per_class[1] == (0.0, 0.0)  # its only detection is below the threshold
    assert (precision, recall) == (pytest.approx(1 / 3), pytest.approx(1 / 3))


# --------------------------------------------------------------------------------------------------
# More (short) training: resume after an interruption, pretrained weights, the documented command
# --------------------------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_checkpoint_and_pretrained_weights_are_used(tiny_model, tmp_path):
    dataset = tiny_model.run.prepared.root
    config = TrainConfig(
        epochs=2, image_size=64, batch_size=16, workers=0, device="cpu", pretrained_weights=tiny_model.run.weights
    )
    lines: list[str] = []

    def interrupt_after_first_epoch(line: str) -> None:
        lines.append(line)
        if line.startswith(f"{METRICS_PREFIX} epoch=1 "):
            raise Interrupted  # like a spot reclaim right after the epoch's checkpoint was saved

    with pytest.raises(Interrupted):
        train_model(
            dataset, tmp_path / "model", config, checkpoint_dir=tmp_path / "ckpt", log=interrupt_after_first_epoch
        )
    assert any(line.startswith("starting from pretrained weights") for line in lines)
    assert not (tmp_path / "model" / "model.onnx").exists()

    resumed = train_model(dataset, tmp_path / "model", config, checkpoint_dir=tmp_path / "ckpt", log=lines.append)
    assert resumed.resumed_from_epoch == 1
    assert any(line.startswith("resuming the unfinished run") for line in lines)
    assert resumed.history[0]["epoch"] == 2.0  # only the remaining epoch ran
    assert resumed.output_shape == (1, 5, anchors(64))

    # A finished run is not resumed (nor is one of another configuration): training starts over.
    again = train_model(dataset, tmp_path / "model", config, checkpoint_dir=tmp_path / "ckpt", log=lines.append)
    assert again.resumed_from_epoch is None and [h["epoch"] for h in again.history][:2] == [1.0, 2.0]


def test_the_documented_command_trains_from_synthetic_data(tmp_path, capsys, monkeypatch):
    # As the README runs it: a relative --output, resolved against the working directory (Ultralytics
    # would put a relative training folder under its own runs directory instead).
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "local-run"
    status = local.main(
        ["--synthetic", "40", "--epochs", "1", "--image-size", "64", "--batch-size", "16", "--output", "local-run"]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "model archive: local-run/model.tar.gz" in printed
    assert (output / "work" / "checkpoints" / "run" / "weights" / "best.pt").is_file()
    assert (output / "work" / "evaluate" / "test").is_dir(), "evaluation's work folder is under --output"
    manifest, _, _ = read_model_archive(output / "model.tar.gz")
    assert manifest.input_size == 64
    assert json.loads((output / "manifest.json").read_text())["image_count"] == 40
    assert set(json.loads((output / "evaluation.json").read_text())["metrics"]) == {*REQUIRED_METRICS, EMPTY_FRAME_RATE}
    assert PreparedDataset.load(output / "work" / "yolo").counts["test"] > 0
    assert set(json.loads((output / "gate.json").read_text())) >= {"passed", "reason", "threshold"}
    synthetic = output / "synthetic"
    required = local.main(
        [
            *("--offline-store", str(synthetic / "offline-store"), "--images", str(synthetic / "images")),
            *("--epochs", "1", "--image-size", "64", "--min-images", "10", "--output", str(tmp_path / "again")),
            *("--require-gate", "--threshold", "1.0"),
        ]
    )
    assert required == 2  # nothing reaches mAP50-95 1.0 in one epoch: the gate fails the command


def test_the_command_explains_bad_input(tmp_path, capsys):
    (tmp_path / "store").mkdir()
    (tmp_path / "images").mkdir()
    store, images = str(tmp_path / "store"), str(tmp_path / "images")
    status = local.main(["--offline-store", store, "--images", images, "--output", str(tmp_path / "out")])
    assert status == 1
    assert "holds no label records" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        local.main(["--output", str(tmp_path / "out")])  # neither --synthetic nor a data source
    assert exited.value.code == 2
    assert "give --synthetic N, or both --offline-store and --images" in capsys.readouterr().err
