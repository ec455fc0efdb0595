"""Step 3, train: YOLOv8 with Ultralytics, resumable from checkpoints, exported to ONNX.

* The network is built from `yolov8<size>.yaml` (from scratch) and takes pretrained weights only from a
  local file the caller provides (the pipeline downloads it from the S3 URI parameter). Nothing is
  downloaded from the internet: `YOLO_OFFLINE`, no AMP check (`amp=False`), no plots (fonts).
* Checkpoints go to `checkpoint_dir` (SageMaker syncs `/opt/ml/checkpoints` with S3). A run that finds
  an unfinished checkpoint of the same configuration resumes it (managed spot interruptions, step
  retries); a finished or different one is set aside and training starts over.
* After each epoch one line `#metrics epoch=N name=value ...` is printed: the training job's metric
  definitions read those lines, so SageMaker shows the training curves.
* The best weights are exported to ONNX with a fixed opset, static input [1, 3, S, S], no NMS, and
  the exported file is checked in onnxruntime before the step succeeds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.steps.prepare import PreparedDataset, write_data_yaml

MODEL_SIZES = ("n", "s", "m", "l", "x")
METRICS_PREFIX = "#metrics"
RUN_NAME = "run"
RUN_STATE_FILE = "run.json"
WEIGHTS_FILE = "model.pt"
ONNX_FILE = "model.onnx"
TRAINING_SUMMARY_FILE = "training.json"


def offline_ultralytics() -> None:
    """Keep Ultralytics off the network and out of Pillow; call before using it.

    Importing Ultralytics replaces `PIL.Image.open` for the whole process with an opener that, on any file
    Pillow cannot identify, tries to pip-install a HEIF plugin (and raises ModuleNotFoundError offline).
    The dataset checks and the device code must see Pillow's own error, so Pillow's opener is put back.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    from PIL import Image  # noqa: PLC0415
    from ultralytics.utils import patches  # noqa: PLC0415

    Image.open = getattr(patches, "_image_open", Image.open)


class TrainingError(Exception):
    """Training could not produce a usable model; the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    model_size: str = "n"
    epochs: int = 50
    image_size: int = 640
    batch_size: int = 16
    onnx_opset: int = 17
    seed: int = 0
    workers: int = 0
    device: str | None = None  # None: the first GPU when there is one, else the CPU
    pretrained_weights: Path | None = None
    patience: int = 100

    def __post_init__(self) -> None:
        if self.model_size not in MODEL_SIZES:
            raise ValueError(f"model size must be one of {', '.join(MODEL_SIZES)}, got {self.model_size!r}")
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"image size must be a positive multiple of 32, got {self.image_size}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")
        if self.pretrained_weights is not None and not Path(self.pretrained_weights).is_file():
            raise ValueError(f"pretrained weights {self.pretrained_weights} do not exist")

    def fingerprint(self, dataset_version: str) -> dict[str, Any]:
        """What a checkpoint must share with this run to be resumed by it."""
        weights = None
        if self.pretrained_weights is not None:
            weights = hashlib.sha256(Path(self.pretrained_weights).read_bytes()).hexdigest()
        return {
            "dataset_version": dataset_version,
            "model_size": self.model_size,
            "epochs": self.epochs,
            "image_size": self.image_size,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "pretrained_sha256": weights,
        }


@dataclass(frozen=True)
class TrainResult:
    weights: Path
    onnx_path: Path
    output_shape: tuple[int, ...]
    resumed_from_epoch: int | None
    history: list[dict[str, float]] = field(default_factory=list)


def metrics_line(epoch: int, values: Mapping[str, float]) -> str:
    """`#metrics epoch=3 train_box_loss=1.2 ... mAP50-95=0.41` (names match `METRIC_DEFINITIONS`)."""
    parts = [f"epoch={epoch}"] + [f"{name}={value:.6g}" for name, value in values.items()]
    return f"{METRICS_PREFIX} " + " ".join(parts)


def _metric_name(key: str) -> str:
    """Ultralytics' keys (`metrics/mAP50-95(B)`, `val/box_loss`) -> our names (`mAP50-95`, `val_box_loss`)."""
    if key.startswith("metrics/"):
        return key.removeprefix("metrics/").removesuffix("(B)")
    return key.replace("/", "_")


METRIC_DEFINITIONS: tuple[tuple[str, str], ...] = tuple(
    (name, rf"{METRICS_PREFIX} .*\b{name}=([-+0-9.eE]+|nan)")
    for name in (
        "epoch",
        "train_box_loss",
        "train_cls_loss",
        "train_dfl_loss",
        "val_box_loss",
        "val_cls_loss",
        "val_dfl_loss",
        "precision",
        "recall",
        "mAP50",
        "mAP50-95",
    )
)
"""(name, regex) for the training job's MetricDefinitions; `mAP50-95` is the validation split's."""


def _checkpoint_epoch(path: Path) -> int:
    """The epoch a `last.pt` stopped after, or -1 when its training finished (Ultralytics' convention)."""
    import torch  # noqa: PLC0415

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return int(checkpoint.get("epoch", -1)) if isinstance(checkpoint, dict) else -1


def _resumable(checkpoint_dir: Path, fingerprint: Mapping[str, Any]) -> Path | None:
    last = checkpoint_dir / RUN_NAME / "weights" / "last.pt"
    state_file = checkpoint_dir / RUN_STATE_FILE
    if not (last.is_file() and state_file.is_file()):
        return None
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        epoch = _checkpoint_epoch(last)
    except Exception:  # a damaged checkpoint is not worth resuming: start over
        return None
    if state != dict(fingerprint) or epoch < 0:
        return None
    return last


def check_onnx_model(path: str | Path, *, image_size: int, num_classes: int) -> tuple[int, ...]:
    """Run the model once in onnxruntime; its input and output must follow the model-archive contract."""
    import numpy as np  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != "images" or list(inputs[0].shape) != [1, 3, image_size, image_size]:
        raise TrainingError(
            f"{path}: expected one input `images` [1, 3, {image_size}, {image_size}], "
            f"got {[(i.name, i.shape) for i in inputs]}"
        )
    (output,) = session.run(None, {"images": np.zeros((1, 3, image_size, image_size), dtype=np.float32)})
    shape = tuple(int(d) for d in output.shape)
    if len(shape) != 3 or shape[0] != 1 or shape[1] != 4 + num_classes:
        raise TrainingError(f"{path}: expected output [1, {4 + num_classes}, N], got {list(shape)}")
    return shape


def export_onnx(weights: Path, destination: Path, *, image_size: int, opset: int) -> Path:
    """Ultralytics' ONNX export (static shape, batch 1, no NMS, simplified) moved to `destination`."""
    offline_ultralytics()
    from ultralytics import YOLO  # noqa: PLC0415

    exported = YOLO(str(weights)).export(
        format="onnx",
        imgsz=image_size,
        opset=opset,
        simplify=True,
        dynamic=False,
        half=False,
        nms=False,
        batch=1,
        device="cpu",
    )
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(exported), destination)
    return destination


def train_model(
    dataset_dir: str | Path,
    output_dir: str | Path,
    config: TrainConfig,
    *,
    checkpoint_dir: str | Path,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train on the `train` split (validating on `val`), then export and check the ONNX model.

    Writes `model.pt`, `model.onnx` and `training.json` to `output_dir`.
    """
    offline_ultralytics()
    from ultralytics import YOLO  # noqa: PLC0415

    dataset = PreparedDataset.load(dataset_dir)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    # Absolute: Ultralytics puts a relative `project` under its own runs folder, not the working directory.
    checkpoints = Path(checkpoint_dir).resolve()
    checkpoints.mkdir(parents=True, exist_ok=True)
    data_yaml = write_data_yaml(
        dataset.root, dataset.class_names, splits=("train", "val"), destination=checkpoints / "data.yaml"
    )
    fingerprint = config.fingerprint(dataset.dataset_version)
    history: list[dict[str, float]] = []

    def on_epoch_end(trainer: Any) -> None:
        values = {
            _metric_name(k): float(v)
            for k, v in {**trainer.label_loss_items(trainer.tloss, prefix="train"), **(trainer.metrics or {})}.items()
        }
        history.append({"epoch": float(trainer.epoch + 1), **values})
        log(metrics_line(trainer.epoch + 1, values))

    resume_from = _resumable(checkpoints, fingerprint)
    resumed_epoch = _checkpoint_epoch(resume_from) + 1 if resume_from else None
    device = config.device or _default_device()
    common = {"data": str(data_yaml), "device": device, "workers": config.workers, "plots": False, "verbose": False}
    if resume_from is not None:
        log(f"resuming the unfinished run in {resume_from.parent.parent} after epoch {resumed_epoch}")
        model = YOLO(str(resume_from))
        model.add_callback("on_fit_epoch_end", on_epoch_end)
        model.train(resume=str(resume_from), **common)
    else:
        shutil.rmtree(checkpoints / RUN_NAME, ignore_errors=True)
        (checkpoints / RUN_STATE_FILE).write_text(json.dumps(fingerprint), encoding="utf-8")
        model = YOLO(f"yolov8{config.model_size}.yaml")
        if config.pretrained_weights is not None:
            log(f"starting from pretrained weights {config.pretrained_weights}")
            model.load(str(config.pretrained_weights))
        model.add_callback("on_fit_epoch_end", on_epoch_end)
        model.train(
            epochs=config.epochs,
            imgsz=config.image_size,
            batch=config.batch_size,
            project=str(checkpoints),
            name=RUN_NAME,
            exist_ok=True,
            amp=False,
            seed=config.seed,
            deterministic=True,
            patience=config.patience,
            **common,
        )
    weights_dir = checkpoints / RUN_NAME / "weights"
    best = next((p for p in (weights_dir / "best.pt", weights_dir / "last.pt") if p.is_file()), None)
    if best is None:
        raise TrainingError(f"training wrote no weights under {weights_dir}")
    weights = output / WEIGHTS_FILE
    shutil.copyfile(best, weights)
    onnx_path = export_onnx(weights, output / ONNX_FILE, image_size=config.image_size, opset=config.onnx_opset)
    shape = check_onnx_model(onnx_path, image_size=config.image_size, num_classes=len(dataset.class_names))
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "dataset_version": dataset.dataset_version,
        "class_names": list(dataset.class_names),
        "resumed_from_epoch": resumed_epoch,
        "onnx_output_shape": list(shape),
        "history": history,
    }
    (output / TRAINING_SUMMARY_FILE).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return TrainResult(weights, onnx_path, shape, resumed_epoch, history)


def _default_device() -> str:
    import torch  # noqa: PLC0415

    return "0" if torch.cuda.is_available() else "cpu"
