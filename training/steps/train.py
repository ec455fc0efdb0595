"""Step 3, train: YOLOv8 with Ultralytics, resumable from checkpoints, exported to ONNX.

* The network is built from `yolov8<size>.yaml` (from scratch) and takes pretrained weights only from a
  local file the caller provides (the pipeline downloads it from the S3 URI parameter). Nothing is
  downloaded from the internet: `YOLO_OFFLINE`, no plots (fonts), and Ultralytics' mixed-precision
  check (which downloads a model to compare with) is replaced by one on the model being trained.
* On a GPU: mixed precision, images cached in memory, no deterministic kernels (slower, and no
  benefit: a run is reproducible from its checkpoint and cached by the pipeline). On the CPU:
  full precision, deterministic.
* Every hyperparameter is given by the caller (the pipeline from config.yaml, `training.local` from
  the same settings); the command line refuses a missing one instead of guessing.
* Checkpoints go to `checkpoint_dir/<fingerprint>/` (SageMaker syncs `/opt/ml/checkpoints` with S3).
  A run that finds an unfinished checkpoint of the same configuration resumes it (managed spot
  interruptions, step retries); a finished one is set aside and training starts over. Runs of other
  configurations (the jobs of a tuning job share the checkpoint location) keep their own folders.
* After each epoch one line `#metrics epoch=N name=value ...` is printed: the training job's metric
  definitions read those lines, so SageMaker shows the training curves. After training, the best
  weights are validated once more and reported as one `#best name=value ...` line: the tuning
  objective, and not one more epoch.
* The best weights are exported to ONNX with a fixed opset, static input [1, 3, S, S], no NMS, and
  the exported file is checked in onnxruntime before the step succeeds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.steps.prepare import PreparedDataset, write_data_yaml

MODEL_SIZES = ("n", "s", "m", "l", "x")
OPTIMIZERS = ("SGD", "AdamW")
METRICS_PREFIX = "#metrics"
BEST_PREFIX = "#best"
RUN_NAME = "run"
RUN_STATE_FILE = "run.json"
WEIGHTS_FILE = "model.pt"
ONNX_FILE = "model.onnx"
TRAINING_SUMMARY_FILE = "training.json"

AUGMENTATION_LIMITS: dict[str, tuple[float, float]] = {
    "fliplr": (0.0, 1.0),  # probability of a left-right flip
    "flipud": (0.0, 1.0),  # probability of an up-down flip
    "degrees": (0.0, 180.0),  # random rotation, +/- degrees
    "translate": (0.0, 0.9),  # random shift, fraction of the image
    "scale": (0.0, 0.9),  # random zoom, +/- fraction
    "mosaic": (0.0, 1.0),  # probability of a 4-image mosaic
    "mixup": (0.0, 1.0),  # probability of blending two images
    "hsv_v": (0.0, 1.0),  # brightness jitter, fraction
    "close_mosaic": (0.0, 1000.0),  # last epochs trained without mosaic
}
"""The augmentation settings a run may set (Ultralytics' names) and their valid ranges."""

HYPERPARAMETERS = (
    "model_size",
    "epochs",
    "image_size",
    "batch_size",
    "patience",
    "optimizer",
    "learning_rate",
    "augmentation",
    "onnx_opset",
    "seed",
    "pretrained_weights",
)
"""The training job's hyperparameters: every one must be given (`pretrained_weights` may be empty)."""


def offline_ultralytics() -> None:
    """Keep Ultralytics off the network and out of Pillow; call before using it.

    * `YOLO_OFFLINE`, no auto-install.
    * Importing Ultralytics replaces `PIL.Image.open` for the whole process with an opener that, on any
      file Pillow cannot identify, tries to pip-install a HEIF plugin (and raises ModuleNotFoundError
      offline). The dataset checks and the device code must see Pillow's own error, so Pillow's opener is
      put back.
    * The trainer's mixed-precision check downloads a pretrained model to compare with: it is replaced
      by `mixed_precision_works`, which compares on the model being trained.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    from PIL import Image  # noqa: PLC0415
    from ultralytics.engine import trainer  # noqa: PLC0415
    from ultralytics.utils import patches  # noqa: PLC0415

    Image.open = getattr(patches, "_image_open", Image.open)
    trainer.check_amp = mixed_precision_works


# GPUs on which half precision is known to give NaN losses or zero mAP (Ultralytics keeps the same list).
_AMP_UNSAFE_GPU = re.compile(
    r"(nvidia|geforce|quadro|tesla).*?(1660|1650|1630|t400|t550|t600|t1000|t1200|t2000|k40m)", re.IGNORECASE
)


def mixed_precision_works(model: Any) -> bool:
    """Whether to train `model` with mixed precision: on a CUDA GPU not known to break it, if its outputs
    in half precision stay finite and close to full precision on the same input. Downloads nothing.
    """
    import copy  # noqa: PLC0415

    import torch  # noqa: PLC0415

    device = next(model.parameters()).device
    if device.type != "cuda":
        return False  # mixed precision is for accelerators
    if _AMP_UNSAFE_GPU.search(torch.cuda.get_device_name(device)):
        print(f"mixed precision off: known to fail on {torch.cuda.get_device_name(device)}")
        return False
    probe = copy.deepcopy(model).eval()
    size = max(256, int(probe.stride.max()) * 4)
    image = torch.rand(2, 3, size, size, device=device)
    with torch.no_grad():
        full = probe(image)[0].float()
        with torch.autocast(device_type="cuda"):
            half = probe(image)[0].float()
    # The head's output holds box coordinates in pixels and class scores in 0..1.
    works = bool(torch.isfinite(half).all()) and bool(torch.allclose(full, half, atol=0.5, rtol=1e-2))
    print(f"mixed precision {'on' if works else 'off: half-precision outputs differ from full precision'}")
    return works


class TrainingError(Exception):
    """Training could not produce a usable model; the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run. The hyperparameters have no defaults here: config.yaml is their one source."""

    model_size: str
    epochs: int
    image_size: int
    batch_size: int
    patience: int  # epochs without improvement on the validation split before training stops
    optimizer: str
    learning_rate: float
    augmentation: Mapping[str, float]
    onnx_opset: int
    seed: int = 0
    workers: int = 0
    device: str | None = None  # None: the first GPU when there is one, else the CPU
    pretrained_weights: Path | None = None

    def __post_init__(self) -> None:
        if self.model_size not in MODEL_SIZES:
            raise ValueError(f"model size must be one of {', '.join(MODEL_SIZES)}, got {self.model_size!r}")
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"image size must be a positive multiple of 32, got {self.image_size}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1 epoch, got {self.patience}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not 0.0 < self.learning_rate < 1.0:
            raise ValueError(f"learning rate must be between 0 and 1, got {self.learning_rate}")
        for name, value in self.augmentation.items():
            if name not in AUGMENTATION_LIMITS:
                raise ValueError(f"unknown augmentation {name!r}; expected some of {', '.join(AUGMENTATION_LIMITS)}")
            low, high = AUGMENTATION_LIMITS[name]
            if not low <= float(value) <= high:
                raise ValueError(f"augmentation {name} must be between {low:g} and {high:g}, got {value}")
        if self.pretrained_weights is not None and not Path(self.pretrained_weights).is_file():
            raise ValueError(f"pretrained weights {self.pretrained_weights} do not exist")

    @classmethod
    def from_hyperparameters(
        cls,
        values: Mapping[str, str],
        *,
        workers: int = 0,
        device: str | None = None,
        weights: Callable[[str], Path] | None = None,
    ) -> TrainConfig:
        """From a training job's hyperparameters (all strings); a missing or malformed one is named.

        `weights` turns the `pretrained_weights` value (an S3 URI) into a local file when it is not empty.
        """
        missing = [name for name in HYPERPARAMETERS if name not in values]
        if missing:
            raise TrainingError(f"hyperparameter(s) missing: {', '.join(missing)} (the pipeline passes all of them)")
        converters: dict[str, Callable[[str], Any]] = {
            "epochs": int,
            "image_size": int,
            "batch_size": int,
            "patience": int,
            "onnx_opset": int,
            "seed": int,
            "learning_rate": float,
            "augmentation": _augmentation,
        }
        parsed: dict[str, Any] = {}
        for name in HYPERPARAMETERS:
            if name == "pretrained_weights":
                continue
            try:
                parsed[name] = converters.get(name, str)(str(values[name]).strip())
            except (ValueError, TypeError) as error:
                raise TrainingError(f"hyperparameter {name}={values[name]!r} is not valid: {error}") from None
        uri = str(values["pretrained_weights"]).strip()
        pretrained = weights(uri) if uri and weights is not None else None
        if uri and weights is None:
            raise TrainingError(f"pretrained weights {uri} given, but nothing can fetch them here")
        try:
            return cls(**parsed, workers=workers, device=device, pretrained_weights=pretrained)
        except ValueError as error:
            raise TrainingError(f"hyperparameters: {error}") from None

    def to_hyperparameters(self, *, pretrained_weights_uri: str = "") -> dict[str, str]:
        """The inverse of `from_hyperparameters` (what a training job receives)."""
        values = {name: str(getattr(self, name)) for name in HYPERPARAMETERS if name != "pretrained_weights"}
        values["augmentation"] = json.dumps(dict(self.augmentation), sort_keys=True, separators=(",", ":"))
        values["pretrained_weights"] = pretrained_weights_uri
        return values

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
            "patience": self.patience,
            "optimizer": self.optimizer,
            "learning_rate": self.learning_rate,
            "augmentation": dict(sorted(self.augmentation.items())),
            "seed": self.seed,
            "pretrained_sha256": weights,
        }


def _augmentation(text: str) -> dict[str, float]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object of augmentation settings")
    return {str(k): float(v) for k, v in value.items()}


@dataclass(frozen=True)
class TrainResult:
    weights: Path
    onnx_path: Path
    output_shape: tuple[int, ...]
    resumed_from_epoch: int | None
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)  # the best weights' validation metrics


def metrics_line(epoch: int, values: Mapping[str, float]) -> str:
    """`#metrics epoch=3 train_box_loss=1.2 ... mAP50-95=0.41` (names match `METRIC_DEFINITIONS`)."""
    parts = [f"epoch={epoch}"] + [f"{name}={value:.6g}" for name, value in values.items()]
    return f"{METRICS_PREFIX} " + " ".join(parts)


def best_line(values: Mapping[str, float]) -> str:
    """`#best precision=... mAP50=... mAP50-95=...`: the validation of the weights training kept."""
    return f"{BEST_PREFIX} " + " ".join(f"{name}={value:.6g}" for name, value in values.items())


def _metric_name(key: str) -> str:
    """Ultralytics' keys (`metrics/mAP50-95(B)`, `val/box_loss`) -> our names (`mAP50-95`, `val_box_loss`)."""
    if key.startswith("metrics/"):
        return key.removeprefix("metrics/").removesuffix("(B)")
    return key.replace("/", "_")


_NUMBER = r"([-+0-9.eE]+|nan)"
BEST_OBJECTIVE = "best_mAP50-95"
"""The tuning objective: validation mAP50-95 of the weights a training job keeps (maximized)."""

METRIC_DEFINITIONS: tuple[tuple[str, str], ...] = (
    *(
        (name, rf"{METRICS_PREFIX} .*\b{name}={_NUMBER}")
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
    ),
    *((f"best_{name}", rf"{BEST_PREFIX} .*\b{name}={_NUMBER}") for name in ("mAP50", "mAP50-95")),
)
"""(name, regex) for the training job's MetricDefinitions; `mAP50-95` is the validation split's per epoch,
`best_mAP50-95` the kept weights' (the tuning objective)."""


def _checkpoint_epoch(path: Path) -> int:
    """The epoch a `last.pt` stopped after, or -1 when its training finished (Ultralytics' convention)."""
    import torch  # noqa: PLC0415

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return int(checkpoint.get("epoch", -1)) if isinstance(checkpoint, dict) else -1


def run_folder(checkpoint_dir: Path, fingerprint: Mapping[str, Any]) -> Path:
    """Where a configuration's run and checkpoints live: one folder per fingerprint."""
    digest = hashlib.sha256(json.dumps(dict(fingerprint), sort_keys=True).encode()).hexdigest()[:16]
    return checkpoint_dir / f"run-{digest}"


def _resumable(folder: Path, fingerprint: Mapping[str, Any]) -> Path | None:
    last = folder / RUN_NAME / "weights" / "last.pt"
    state_file = folder / RUN_STATE_FILE
    if not (last.is_file() and state_file.is_file()):
        return None
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        epoch = _checkpoint_epoch(last)
    except Exception:  # a damaged checkpoint is not worth resuming: start over
        return None
    if state != json.loads(json.dumps(dict(fingerprint))) or epoch < 0:
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
    fingerprint = config.fingerprint(dataset.dataset_version)
    # Absolute: Ultralytics puts a relative `project` under its own runs folder, not the working directory.
    folder = run_folder(Path(checkpoint_dir).resolve(), fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    data_yaml = write_data_yaml(
        dataset.root, dataset.class_names, splits=("train", "val"), destination=folder / "data.yaml"
    )
    history: list[dict[str, float]] = []
    best: dict[str, float] = {}

    def on_fit_epoch_end(trainer: Any) -> None:
        if not trainer.validator.training:  # the final validation of the best weights, not an epoch
            best.update({_metric_name(k): float(v) for k, v in (trainer.metrics or {}).items() if "loss" not in k})
            log(best_line(best))
            return
        values = {
            _metric_name(k): float(v)
            for k, v in {**trainer.label_loss_items(trainer.tloss, prefix="train"), **(trainer.metrics or {})}.items()
        }
        history.append({"epoch": float(trainer.epoch + 1), **values})
        log(metrics_line(trainer.epoch + 1, values))

    resume_from = _resumable(folder, fingerprint)
    resumed_epoch = _checkpoint_epoch(resume_from) + 1 if resume_from else None
    device = config.device or _default_device()
    on_gpu = device != "cpu"
    common = {
        "data": str(data_yaml),
        "device": device,
        "workers": config.workers,
        "plots": False,
        "verbose": False,
        "cache": "ram" if on_gpu else False,  # decoding JPEGs every epoch starves a GPU
    }
    if resume_from is not None:
        log(f"resuming the unfinished run in {resume_from.parent.parent} after epoch {resumed_epoch}")
        model = YOLO(str(resume_from))
        model.add_callback("on_fit_epoch_end", on_fit_epoch_end)
        model.train(resume=str(resume_from), **common)
    else:
        shutil.rmtree(folder / RUN_NAME, ignore_errors=True)
        (folder / RUN_STATE_FILE).write_text(json.dumps(fingerprint), encoding="utf-8")
        model = YOLO(f"yolov8{config.model_size}.yaml")
        if config.pretrained_weights is not None:
            log(f"starting from pretrained weights {config.pretrained_weights}")
            model.load(str(config.pretrained_weights))
        model.add_callback("on_fit_epoch_end", on_fit_epoch_end)
        model.train(
            epochs=config.epochs,
            imgsz=config.image_size,
            batch=config.batch_size,
            patience=config.patience,
            optimizer=config.optimizer,
            lr0=config.learning_rate,
            **{name: (int(value) if name == "close_mosaic" else value) for name, value in config.augmentation.items()},
            project=str(folder),
            name=RUN_NAME,
            exist_ok=True,
            amp=on_gpu,  # checked by `mixed_precision_works` before it is used
            seed=config.seed,
            deterministic=not on_gpu,
            **common,
        )
    weights_dir = folder / RUN_NAME / "weights"
    kept = next((p for p in (weights_dir / "best.pt", weights_dir / "last.pt") if p.is_file()), None)
    if kept is None:
        raise TrainingError(f"training wrote no weights under {weights_dir}")
    weights = output / WEIGHTS_FILE
    shutil.copyfile(kept, weights)
    onnx_path = export_onnx(weights, output / ONNX_FILE, image_size=config.image_size, opset=config.onnx_opset)
    shape = check_onnx_model(onnx_path, image_size=config.image_size, num_classes=len(dataset.class_names))
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "device": device,
        "dataset_version": dataset.dataset_version,
        "class_names": list(dataset.class_names),
        "resumed_from_epoch": resumed_epoch,
        "onnx_output_shape": list(shape),
        "history": history,
        "best": best,
    }
    (output / TRAINING_SUMMARY_FILE).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return TrainResult(weights, onnx_path, shape, resumed_epoch, history, best)


def _default_device() -> str:
    import torch  # noqa: PLC0415

    return "0" if torch.cuda.is_available() else "cpu"
