"""Benchmark of the edge detector (the inference component's `inspector` package), FP32 and INT8 side by side.

    .venv/bin/python benchmarks/edge_detector.py                        # trains YOLOv8n on the reference photos first
    .venv/bin/python benchmarks/edge_detector.py --model DIR|M.onnx [--int8 Q.onnx] [--dataset YOLO_DIR]
    .venv/bin/python benchmarks/edge_detector.py --untrained --model-size m   # latency only, random weights

Prints figures and their goals; asserts nothing. Frames: the reference tag photos (450x300 JPEG,
`../shared/datasets/reference-tags/images` beside the checkout) by default, `--images DIR` or
`--synthetic` (synthetic tags of `--frame-size`) instead; every run also times the same frames
scaled to 1920x1080. The INT8 model is the one model.json lists beside the FP32 model, or `--int8`, or
made here by training.steps.quantize (calibrated on `--calibration`, else the dataset's training
images, else the frames). Figures:

1. per-frame latency of `Detector.detect` (letterbox + inference + NMS) against a bare
   `InferenceSession.run` of the same session on an already prepared tensor, FP32 and INT8, on the
   frames and at 1920x1080                                           goal: <= 1.05x
2. INT8 detector latency against FP32's on the same frames            goal: <= 0.6x
3. test mAP50 of INT8 against FP32 (model.json's, or `--dataset`'s test split evaluated here)
                                                                      goal: at most 1 point lower
4. the FP32 detector against Ultralytics' own ONNX prediction        goal: faster
5. peak RSS of a fresh process that imports only the device package and serves every frame
                                                                      goal: <= 150 MB
6. process start to first result (`python -m inspector.cli` on one frame, fresh process)
                                                                      goal: <= 1 s
7. installed size of the device dependencies (requirements.txt and what it pulls in) goal: <= 200 MB

Latencies: the methods take turns on every frame (FP32 detector, FP32 bare run, INT8 detector, INT8
bare run, ...) for `--rounds` passes over the frames, so a busy machine slows them alike; ratios are
taken per frame between neighbours in time and reported as median and interquartile range. onnxruntime
runs with its default threading. A cross-check measures the CPU time of the process per call with
onnxruntime on one thread, which other load on the machine hardly changes: each model alone (its
detector and bare run taking turns, as on a device that serves one model; the ratio with both models
taking turns is printed beside it), and splits the detector's CPU time into letterbox, inference and
post-processing (each stage right after the one before, as in `detect`). The detector letterboxes and
post-processes in compiled code where this machine can build it (inspector/native.py, as a device
does); the cross-check is repeated with numpy doing both (a device without a C compiler) and, where
OpenCV is installed, with OpenCV's resize as the numpy detector's letterbox (not a device dependency).
The conditions (CPUs, load average before and after) are printed.
"""

# ruff: noqa: PLC0415, S603 - heavy imports only where used; subprocesses run this interpreter

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")  # Ultralytics must not reach the internet

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPONENT_DIR = REPO_ROOT / "edge_deployment" / "components" / "inference"
REQUIREMENTS = COMPONENT_DIR / "requirements.txt"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results" / "edge-detector"
REFERENCE_PHOTOS = REPO_ROOT.parent / "shared" / "datasets" / "reference-tags"
HD = (1920, 1080)
sys.path.insert(0, str(REPO_ROOT))

# The device process of figures 5 and 6: the component folder alone on the path, as on a device.
RSS_SCRIPT = """
import json, sys
from pathlib import Path
from inspector.detector import load_detector, load_image
detector = load_detector(sys.argv[1])
frames = [p for p in sorted(Path(sys.argv[2]).iterdir()) if p.suffix.lower() in ('.jpg', '.png')]
for _ in range(int(sys.argv[3])):
    for path in frames:
        detector.detect(load_image(path))
heavy = sorted(m for m in ('torch', 'ultralytics', 'cv2') if m in sys.modules)
# VmHWM, not getrusage's ru_maxrss: the latter survives exec and would report the parent's peak.
peak = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:'))
print(json.dumps({"peak_rss_kb": peak, "heavy": heavy, "frames": len(frames)}))
"""


@dataclass(frozen=True)
class Figure:
    name: str
    value: float | None
    unit: str
    goal: str
    met: bool | None
    note: str = ""

    def line(self) -> str:
        verdict = "n/a" if self.met is None else ("met" if self.met else "NOT MET")
        value = "   n/a  " if self.value is None else f"{self.value:>8.3f}"
        return f"{self.name:<58} {value} {self.unit:<6} goal {self.goal:<14} {verdict:<8} {self.note}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "unit": self.unit, "goal": self.goal, "met": self.met}


@dataclass
class Models:
    fp32: Path
    int8: Path
    map50: dict[str, float] = field(default_factory=dict)  # test mAP50 per precision, when known
    source: str = ""


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def reference_source(directory: Path, output: Path) -> tuple[Path, Path]:
    """The reference photos' labels (labels.jsonl, seed-file form) as an offline store; (store, images)."""
    from labeling.runtime.seeding import parse_seed_file
    from training.steps.dataset import write_offline_store

    seed = parse_seed_file(
        (directory / "labels.jsonl").read_text(encoding="utf-8"),
        filename="labels.jsonl",
        class_names=["scratch"],
        base_uri="s3://reference-tags/",
    )
    if seed.errors:
        raise SystemExit(f"{directory}/labels.jsonl: {seed.errors[:3]}")
    write_offline_store(seed.records, output)
    return output, directory


def train_reference_model(output: Path, *, model_size: str, epochs: int, image_size: int) -> Models:
    """YOLOv8 trained by the project's training code on the reference photos; INT8 added and evaluated."""
    from shared.config import DEFAULT_CONFIG_FILE, load_settings
    from training.local import LocalRunOptions, run_local
    from training.steps.quantize import quantize_evaluate_and_add

    store, images = reference_source(REFERENCE_PHOTOS, output / "offline-store")
    settings = load_settings(DEFAULT_CONFIG_FILE)
    options = LocalRunOptions.from_settings(
        settings, model_size=model_size, epochs=epochs, image_size=image_size, min_images=50, device="cpu", workers=0
    )
    started = time.perf_counter()
    result = run_local(offline_store=store, images=images, output=output / "run", options=options, log=print)
    print(f"trained in {time.perf_counter() - started:.0f} s: {result.archive}")
    if result.manifest.variant("int8") is None:  # the run's settings left INT8 out: add it here
        quantize_evaluate_and_add(
            result.archive,
            result.onnx_path,
            result.prepared.root,
            fp32_metrics=result.evaluation.metrics,
            image_size=image_size,
            confidence_threshold=result.manifest.confidence_threshold,
            iou_threshold=result.manifest.iou_threshold,
            work_dir=output / "quantize",
        )
    return unpack(result.archive, output / "model")


def unpack(archive: Path, directory: Path) -> Models:
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(directory, filter="data")
    return models_in(directory / "model.onnx", None)


def models_in(model: Path, int8: Path | None) -> Models:
    """The FP32 model and its INT8 file (given, or listed in model.json), with their recorded test mAP50."""
    fp32 = model / "model.onnx" if model.is_dir() else model
    manifest_path = fp32.with_name("model.json")
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    map50 = {
        precision: float(entry["metrics"]["mAP50"])
        for precision, entry in (manifest.get("precisions") or {}).items()
        if isinstance(entry, dict) and "mAP50" in entry.get("metrics", {})
    }
    listed = (manifest.get("precisions") or {}).get("int8", {}).get("file")
    chosen = int8 or (fp32.with_name(listed) if listed else None)
    return Models(fp32=fp32, int8=chosen or Path(), map50=map50 if chosen and not int8 else {}, source=str(fp32))


def untrained_model(output: Path, *, model_size: str, image_size: int) -> Path:
    """A YOLOv8 of the given size with random weights, exported like the pipeline exports (latency only)."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from training.steps.train import export_onnx, offline_ultralytics

    offline_ultralytics()
    model = DetectionModel(f"yolov8{model_size}.yaml", nc=1, verbose=False)
    model.names = {0: "scratch"}
    weights = output / f"untrained-{model_size}.pt"
    output.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "train_args": {"imgsz": image_size}}, weights)
    return export_onnx(weights, output / f"untrained-{model_size}" / "model.onnx", image_size=image_size, opset=17)


def quantize_here(models: Models, calibration: Path, output: Path) -> None:
    from training.steps.quantize import quantize_model

    result = quantize_model(models.fp32, calibration, output / "model.int8.onnx")
    print(f"quantized on {result.calibration_images} image(s) of {calibration}: {result.output}")
    manifest = models.fp32.with_name("model.json")
    if manifest.is_file():  # the same class names and thresholds for both
        shutil.copy(manifest, output / "model.json")
    models.int8 = result.output


def evaluate_both(models: Models, dataset: Path, output: Path) -> None:
    """Test mAP50 of both models on a prepared (YOLO layout) dataset's test split, as the pipeline evaluates."""
    from training.steps.comparison import mean_average_precision
    from training.steps.prepare import PreparedDataset
    from training.steps.scoring import score_images

    manifest_path = models.fp32.with_name("model.json")
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for precision, path in (("fp32", models.fp32), ("int8", models.int8)):
        results, _ = score_images(
            path,
            PreparedDataset.load(dataset),
            image_size=int(manifest.get("input_size", 0)) or _input_size(path),
            iou_threshold=float(manifest.get("iou_threshold", 0.45)),
            work_dir=output / f"evaluate-{precision}",
            name=precision,
        )
        models.map50[precision] = mean_average_precision(results)[0]


def _input_size(model: Path) -> int:
    import onnxruntime

    shape = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    return int(shape[2])


# --------------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------------


def frame_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))


def synthetic_frames(directory: Path, count: int, *, width: int, height: int) -> Path:
    from shared.synthetic import write_dataset

    write_dataset(directory, count, seed=2024, width=width, height=height)
    return directory


def scaled_frames(files: Sequence[Path], directory: Path, size: tuple[int, int]) -> Path:
    """The frames scaled to `size` (JPEG): a camera's full-HD frames with the same content."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    for path in files:
        target = directory / f"{path.stem}.jpg"
        if not target.exists():
            Image.open(path).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(target, quality=92)
    return directory


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------


def interleaved(
    methods: dict[str, Callable[[int], object]],
    *,
    frames: int,
    rounds: int,
    clock: Callable[[], float] = time.perf_counter,
    setup: Callable[[str, int], object] | None = None,
) -> dict[str, list[float]]:
    """Milliseconds per call of each method, the methods taking turns on every frame, `rounds` times over.

    The order of the turns rotates from frame to frame, so that no method always follows the same one
    (a method run right after a long one finds onnxruntime's threads parked and the caches cold).
    `clock`: wall time, or time.process_time for the CPU time of the whole process. `setup(method, frame)`
    runs before each call, outside the time.
    """
    names = list(methods)
    for index in range(min(frames, 5)):  # warm-up
        for run in methods.values():
            run(index)
    times: dict[str, list[float]] = {name: [] for name in methods}
    turn = 0
    for _ in range(rounds):
        for index in range(frames):
            turn += 1
            for name in names[turn % len(names) :] + names[: turn % len(names)]:
                if setup is not None:
                    setup(name, index)
                started = clock()
                methods[name](index)
                times[name].append((clock() - started) * 1000.0)
    return times


def spread(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    return {"median": statistics.median(ordered), "q1": quartiles[0], "q3": quartiles[2]}


def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """Per-frame ratios of neighbours in time: robust to a machine whose load changes during the run."""
    return spread([a / b for a, b in zip(numerator, denominator, strict=True)])


def cpu_work(models: Models, files: Sequence[Path], *, rounds: int) -> dict[str, Any]:
    """A cross-check that a busy machine cannot blur: CPU time of the whole process per call, onnxruntime on
    one thread (no thread ever waits or spins), detector against bare run of the same session.

    The overhead ratios come from each model alone, its detector and bare run taking turns, as on a device
    that serves one model; `*_overhead_mixed` from all four methods taking turns, where each call finds
    the caches as the other model's run left them."""
    import numpy as np

    from edge_deployment.components.inference.inspector.detector import (
        letterbox_geometry,
        load_detector,
        load_image,
        tensor_resizer,
    )

    images = [load_image(path) for path in files]
    methods: dict[str, Callable[[int], object]] = {}
    detectors: dict[str, Any] = {}
    for precision, path in (("fp32", models.fp32), ("int8", models.int8)):
        detector = detectors[precision] = load_detector(path, threads=1)
        feeds = [{detector.input_name: np.array(detector.prepare(image)[0])} for image in images]
        methods[f"{precision}_detector"] = _detect_call(detector, images)
        methods[f"{precision}_bare"] = _run_call(detector.session, feeds)
    times = interleaved(methods, frames=len(images), rounds=rounds, clock=time.process_time)
    result: dict[str, Any] = {name: spread(values) for name, values in times.items()}
    for precision in ("fp32", "int8"):
        served, bare = f"{precision}_detector", f"{precision}_bare"
        alone = interleaved(
            {served: methods[served], bare: methods[bare]},
            frames=len(images),
            rounds=rounds,
            clock=time.process_time,
        )
        result[f"{precision}_overhead"] = ratios(alone[served], alone[bare])
        result[f"{precision}_overhead_mixed"] = ratios(times[served], times[bare])
        result[f"{precision}_overhead_cached"] = in_cache_overhead(detectors[precision], images, rounds=rounds)
        result[f"{precision}_stages"] = stage_times(detectors[precision], images, rounds=rounds)
    result["int8_vs_fp32_bare"] = ratios(times["int8_bare"], times["fp32_bare"])
    height, width = images[0].shape[:2]
    fp32 = detectors["fp32"]
    geometry = letterbox_geometry(height, width, fp32.input_height, fp32.input_width)
    result["resizer"] = type(tensor_resizer(height, width, geometry.height, geometry.width)).__name__
    return result


def numpy_alternatives(models: Models, files: Sequence[Path], *, rounds: int) -> dict[str, Any]:
    """The CPU-time cross-check again with numpy doing the work around the model, as on a device without a
    C compiler ("numpy"), and with OpenCV's resize as that numpy detector's letterbox ("opencv": compiled
    C++ on one thread, then a numpy division into the tensor; OpenCV is not a device dependency, it is in
    the benchmark's environment through Ultralytics). Each must prepare the very tensors the detector
    does (all are bit-exact)."""
    from importlib import metadata
    from unittest import mock

    import numpy as np

    from edge_deployment.components.inference.inspector import detector as module

    resizers: dict[str, Callable[[int, int, int, int], Any]] = {"numpy": module.linear_resizer}
    result: dict[str, Any] = {}
    try:
        import cv2
    except ImportError:  # no OpenCV: only the numpy alternative
        cv2 = None  # type: ignore[assignment]
    if cv2 is not None:

        class OpenCVResizer:
            def __init__(self, height: int, width: int) -> None:
                self.size = (width, height)

            def resize_into(self, image: np.ndarray, out: np.ndarray) -> None:
                resized = cv2.resize(image, self.size, interpolation=cv2.INTER_LINEAR)
                np.divide(resized.transpose(2, 0, 1), np.float32(255), out=out)

        cv2.setNumThreads(1)
        resizers["opencv"] = lambda _h, _w, height, width: OpenCVResizer(height, width)
        distribution = next(iter(metadata.packages_distributions().get("cv2", [])), "opencv")
        result["opencv"] = f"{distribution} {cv2.__version__}"
        result["opencv_mb"] = installed_mb(distribution) if distribution != "opencv" else None
    images = [module.load_image(path) for path in files]
    for precision, path in (("fp32", models.fp32), ("int8", models.int8)):
        served = module.load_detector(path, threads=1)
        feeds = [{served.input_name: np.array(served.prepare(image)[0])} for image in images]
        numpy_only = module.load_detector(path, threads=1, compiled=False)
        for name, factory in resizers.items():
            with mock.patch.object(module, "linear_resizer", factory):
                result[f"{name}_same_tensors"] = all(
                    np.array_equal(numpy_only.prepare(image)[0], feed[served.input_name])
                    for image, feed in zip(images, feeds, strict=True)
                )
                alone = interleaved(
                    {"detector": _detect_call(numpy_only, images), "bare": _run_call(numpy_only.session, feeds)},
                    frames=len(images),
                    rounds=rounds,
                    clock=time.process_time,
                )
            result[f"{name}_{precision}_overhead"] = ratios(alone["detector"], alone["bare"])
    return result


def in_cache_overhead(detector: Any, images: Sequence[Any], *, rounds: int) -> dict[str, float]:
    """Detector / bare run with each input just written, as on a device: the frame by its decoder, the
    tensor of the bare run by whatever prepared it. The other figures give both from memory, which at
    1920x1080 (6 MB a frame) costs the letterbox about 0.2 ms of reading."""
    import numpy as np

    frame = {image.shape: np.empty_like(image) for image in images}
    tensors = [np.array(detector.prepare(image)[0]) for image in images]
    tensor = np.empty_like(tensors[0])

    def setup(method: str, index: int) -> None:
        if method == "detector":
            np.copyto(frame[images[index].shape], images[index])
        else:
            np.copyto(tensor, tensors[index])

    times = interleaved(
        {
            "detector": lambda index: detector.detect(frame[images[index].shape]),
            "bare": lambda _index: detector.session.run(None, {detector.input_name: tensor}),
        },
        frames=len(images),
        rounds=rounds,
        clock=time.process_time,
        setup=setup,
    )
    return ratios(times["detector"], times["bare"])


def stage_times(detector: Any, images: Sequence[Any], *, rounds: int) -> dict[str, float]:
    """Where the detector's CPU time goes, per frame (median milliseconds): letterbox, inference, post-processing.

    Each stage runs right after the previous one, as in `detect`: the letterbox finds the caches as the last
    inference left them, the post-processing as this one left them. Each of the two is then run once more
    on the same input ("warm"): the difference is what refilling the caches costs."""
    stages: dict[str, list[float]] = {
        name: [] for name in ("letterbox", "inference", "postprocess", "letterbox_warm", "postprocess_warm")
    }
    clock = time.process_time
    for _ in range(rounds):
        for image in images:
            height, width = image.shape[:2]
            started = clock()
            tensor, geometry = detector.prepare(image)
            prepared = clock()
            output = detector.session.run([detector.output_name], {detector.input_name: tensor})[0]
            ran = clock()
            detector.postprocess(output[0], geometry, height, width)
            finished = clock()
            detector.postprocess(output[0], geometry, height, width)
            again = clock()
            detector.prepare(image)
            warm = clock()
            detector.prepare(image)
            stages["letterbox_warm"].append((clock() - warm) * 1000.0)
            stages["letterbox"].append((prepared - started) * 1000.0)
            stages["inference"].append((ran - prepared) * 1000.0)
            stages["postprocess"].append((finished - ran) * 1000.0)
            stages["postprocess_warm"].append((again - finished) * 1000.0)
    return {name: statistics.median(values) for name, values in stages.items()}


def latencies(models: Models, files: Sequence[Path], *, rounds: int, ultralytics: bool) -> dict[str, Any]:
    """Detector and bare-session latencies of both precisions (and Ultralytics') on the same decoded frames."""
    import numpy as np

    from edge_deployment.components.inference.inspector.detector import load_detector, load_image

    images = [load_image(path) for path in files]
    methods: dict[str, Callable[[int], object]] = {}
    count = len(images)
    detectors = {}
    for precision, path in (("fp32", models.fp32), ("int8", models.int8)):
        detector = load_detector(path)
        detectors[precision] = detector
        # Prepared once, outside the timing; the bare run uses the detector's own session (same options).
        tensors = [np.array(detector.prepare(image)[0]) for image in images]
        feeds = [{detector.input_name: tensor} for tensor in tensors]
        methods[f"{precision}_detector"] = _detect_call(detector, images)
        methods[f"{precision}_bare"] = _run_call(detector.session, feeds)
    if ultralytics:
        from ultralytics import YOLO

        yolo = YOLO(str(models.fp32), task="detect")
        bgr = [np.ascontiguousarray(image[..., ::-1]) for image in images]  # Ultralytics takes OpenCV's BGR
        fp32 = detectors["fp32"]
        conf, iou, size = fp32.confidence_threshold, fp32.iou_threshold, fp32.input_width
        methods["ultralytics"] = lambda i: yolo.predict(
            bgr[i % count], conf=conf, iou=iou, imgsz=size, verbose=False, device="cpu"
        )
    times = interleaved(methods, frames=count, rounds=rounds)
    times["decode"] = interleaved({"decode": lambda i: load_image(files[i % count])}, frames=count, rounds=1)["decode"]
    result: dict[str, Any] = {name: spread(values) for name, values in times.items()}
    for precision in ("fp32", "int8"):
        result[f"{precision}_overhead"] = ratios(times[f"{precision}_detector"], times[f"{precision}_bare"])
    result["int8_vs_fp32_detector"] = ratios(times["int8_detector"], times["fp32_detector"])
    result["int8_vs_fp32_bare"] = ratios(times["int8_bare"], times["fp32_bare"])
    if ultralytics:
        result["fp32_vs_ultralytics"] = ratios(times["fp32_detector"], times["ultralytics"])
    result["samples"] = len(times["decode"])
    result["input_size"] = detectors["fp32"].input_width
    return result


def _detect_call(detector: Any, images: Sequence[Any]) -> Callable[[int], object]:
    return lambda index: detector.detect(images[index % len(images)])


def _run_call(session: Any, feeds: Sequence[dict[str, Any]]) -> Callable[[int], object]:
    return lambda index: session.run(None, feeds[index % len(feeds)])


def device_env() -> dict[str, str]:
    return {"PYTHONPATH": str(COMPONENT_DIR), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(Path.home())}


def peak_rss_mb(model: Path, frames_dir: Path, *, rounds: int) -> tuple[float, dict[str, Any]]:
    completed = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(model), str(frames_dir), str(rounds)],
        capture_output=True,
        text=True,
        env=device_env(),
        timeout=900,
        check=True,
    )
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return report["peak_rss_kb"] / 1024.0, report


def start_to_first_result_s(model: Path, frame: Path, *, runs: int) -> float:
    """From starting `python -m inspector.cli` on one frame to reading its JSON line (median of runs)."""
    with tempfile.TemporaryDirectory() as folder:
        single = Path(folder)
        shutil.copy(frame, single / frame.name)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            process = subprocess.Popen(
                [sys.executable, "-m", "inspector.cli", "--model", str(model), "--images", str(single)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=device_env(),
            )
            assert process.stdout is not None
            line = process.stdout.readline()
            times.append(time.perf_counter() - started)
            process.wait(timeout=120)
            if not line.startswith("{"):
                raise RuntimeError(f"inspector.cli gave no result line (exit {process.returncode})")
    return statistics.median(times)


def installed_mb(name: str) -> float:
    """Installed size of one distribution (its files, compiled bytecode left out)."""
    from importlib import metadata

    distribution = metadata.distribution(name)
    size = 0
    for file in distribution.files or []:
        path = Path(str(distribution.locate_file(file)))
        if path.is_file() and "__pycache__" not in path.parts:
            size += path.stat().st_size
    return size / 1e6


def dependency_size_mb(requirements: Path) -> tuple[float, dict[str, float]]:
    """Installed size of the pinned distributions and everything they require (extras left out)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    wanted = [
        Requirement(line.split("#", 1)[0].strip()).name
        for line in requirements.read_text().splitlines()
        if line.split("#", 1)[0].strip()
    ]
    seen: dict[str, float] = {}
    while wanted:
        name = canonicalize_name(wanted.pop())
        if name in seen:
            continue
        seen[name] = installed_mb(name)
        for text in metadata.distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.append(requirement.name)
    return sum(seen.values()), dict(sorted(seen.items(), key=lambda item: -item[1]))


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _ratio_figure(name: str, stats: dict[str, float], goal: float) -> Figure:
    value = stats["median"]
    return Figure(name, value, "x", f"<= {goal:.2f}x", value <= goal, f"IQR {stats['q1']:.3f}-{stats['q3']:.3f}")


def report(
    models: Models, timing: dict[str, dict[str, Any]], extra: dict[str, Any], labels: dict[str, str]
) -> list[Figure]:
    figures = [
        _ratio_figure(
            f"{precision.upper()} detector / bare session.run, {label}", timing[key][f"{precision}_overhead"], 1.05
        )
        for key, label in labels.items()
        for precision in ("fp32", "int8")
    ]
    for key, label in labels.items():
        for precision in ("fp32", "int8"):
            stats = timing[key]["cpu"][f"{precision}_overhead"]
            mixed = timing[key]["cpu"][f"{precision}_overhead_mixed"]["median"]
            name = f"  cross-check: {precision.upper()} CPU time, detector / bare, 1 thread, {label}"
            figure = _ratio_figure(name, stats, 1.05)
            cached = timing[key]["cpu"][f"{precision}_overhead_cached"]["median"]
            note = f"{figure.note}; {mixed:.3f} with both models taking turns, {cached:.3f} with inputs in cache"
            figures.append(replace(figure, note=note))
    for key, label in labels.items():
        alternatives = timing[key]["alternatives"]
        for name, title in (("numpy", "numpy only (no C compiler)"), ("opencv", "numpy with OpenCV's resize")):
            for precision in ("fp32", "int8") if f"{name}_fp32_overhead" in alternatives else ():
                figure = _ratio_figure(
                    f"  {title}: {precision.upper()} CPU time, {label}",
                    alternatives[f"{name}_{precision}_overhead"],
                    1.05,
                )
                note = "" if name == "numpy" else f"; {alternatives['opencv']}, not a device dependency"
                figures.append(replace(figure, met=None, note=figure.note + note))
    first = next(iter(labels))
    figures.append(
        _ratio_figure(f"INT8 / FP32 detector latency, {labels[first]}", timing[first]["int8_vs_fp32_detector"], 0.6)
    )
    if {"fp32", "int8"} <= set(models.map50):
        loss = (models.map50["fp32"] - models.map50["int8"]) * 100
        figures.append(
            Figure(
                "test mAP50 lost by INT8 (points)",
                loss,
                "points",
                "<= 1 point",
                loss <= 1.0,
                f"FP32 {models.map50['fp32']:.4f}, INT8 {models.map50['int8']:.4f}",
            )
        )
    else:
        figures.append(Figure("test mAP50 lost by INT8 (points)", None, "points", "<= 1 point", None, "not evaluated"))
    if "fp32_vs_ultralytics" in timing[first]:
        stats = timing[first]["fp32_vs_ultralytics"]
        figures.append(
            Figure(
                f"FP32 detector / Ultralytics ONNX predict, {labels[first]}",
                stats["median"],
                "x",
                "< 1 (faster)",
                stats["median"] < 1,
                f"IQR {stats['q1']:.3f}-{stats['q3']:.3f}",
            )
        )
    for precision in ("fp32", "int8"):
        rss, name = extra[f"{precision}_rss_mb"], f"peak RSS of the running detector, {precision.upper()}"
        figures.append(Figure(name, rss, "MB", "<= 150 MB", rss <= 150))
    for precision in ("fp32", "int8"):
        start, name = extra[f"{precision}_start_s"], f"process start to first result, {precision.upper()}"
        figures.append(Figure(name, start, "s", "<= 1 s", start <= 1.0))
    size = extra["dependency_mb"]
    figures.append(Figure("installed device dependencies", size, "MB", "<= 200 MB", size <= 200))
    return figures


def conditions() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model folder, model.onnx or model.tar.gz; default: train one")
    parser.add_argument("--int8", type=Path, help="the INT8 model (default: model.json's, else quantized here)")
    parser.add_argument("--calibration", type=Path, help="calibration images when quantizing here")
    parser.add_argument("--dataset", type=Path, help="prepared dataset (YOLO layout): evaluate both on its test split")
    parser.add_argument("--images", type=Path, help="folder of frames (default: the reference photos)")
    parser.add_argument("--synthetic", action="store_true", help="synthetic tags of --frame-size instead of photos")
    parser.add_argument("--frame-size", default="640x480", help="synthetic frame size WxH (default 640x480)")
    parser.add_argument("--frames", type=int, default=40, help="frames per set (default 40)")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the frames (default 3)")
    parser.add_argument("--model-size", default="n", choices=["n", "s", "m", "l", "x"], help="to train (default n)")
    parser.add_argument("--untrained", action="store_true", help="random weights of --model-size: latency only")
    parser.add_argument("--epochs", type=int, default=60, help="training epochs when training (default 60)")
    parser.add_argument("--image-size", type=int, default=320, help="model input size when training (default 320)")
    parser.add_argument("--no-ultralytics", action="store_true", help="skip the comparison with Ultralytics")
    return parser


def choose_models(args: argparse.Namespace, work: Path) -> Models:
    if args.untrained:
        return Models(fp32=untrained_model(work, model_size=args.model_size, image_size=args.image_size), int8=Path())
    if args.model is None:
        output = work / f"trained-{args.model_size}"
        return train_reference_model(output, model_size=args.model_size, epochs=args.epochs, image_size=args.image_size)
    if args.model.name.endswith(".tar.gz"):
        return unpack(args.model, work / "model")
    return models_in(args.model, args.int8)


def choose_frames(args: argparse.Namespace, work: Path) -> tuple[Path, list[Path]]:
    if args.synthetic:
        width, height = (int(v) for v in args.frame_size.lower().split("x"))
        frames_dir = synthetic_frames(work / f"frames-{width}x{height}", args.frames, width=width, height=height)
    else:
        frames_dir = args.images or REFERENCE_PHOTOS / "images"
    return frames_dir, frame_files(frames_dir)[: args.frames]


def device_figures(models: Models, files: Sequence[Path]) -> dict[str, Any]:
    """Peak RSS and start to first result of both precisions, in fresh processes with the device code only."""
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rss-frames-") as folder:
        for path in files[:20]:
            shutil.copy(path, Path(folder) / path.name)
        for precision, path in (("fp32", models.fp32), ("int8", models.int8)):
            extra[f"{precision}_rss_mb"], extra[f"{precision}_rss"] = peak_rss_mb(path, Path(folder), rounds=2)
            extra[f"{precision}_start_s"] = start_to_first_result_s(path, files[0], runs=3)
    return extra


def print_timing(timing: dict[str, dict[str, Any]], labels: dict[str, str]) -> None:
    for key, label in labels.items():
        t = timing[key]
        print(f"{label} (input {t['input_size']} px), medians over {t['samples']} frames:")
        for name in ("fp32_detector", "fp32_bare", "int8_detector", "int8_bare", "ultralytics", "decode"):
            if name in t:
                print(f"  {name:<15} {t[name]['median']:8.2f} ms  (IQR {t[name]['q1']:.2f}-{t[name]['q3']:.2f})")
        cpu = t["cpu"]
        print(
            f"  CPU time, one onnxruntime thread: FP32 detector {cpu['fp32_detector']['median']:.2f} ms, bare "
            f"{cpu['fp32_bare']['median']:.2f}; INT8 detector {cpu['int8_detector']['median']:.2f}, bare "
            f"{cpu['int8_bare']['median']:.2f} (INT8 / FP32 bare {cpu['int8_vs_fp32_bare']['median']:.3f}x)"
        )
        for precision in ("fp32", "int8"):
            stages = cpu[f"{precision}_stages"]
            print(
                f"  where {precision.upper()}'s CPU time goes (one thread, per frame): letterbox "
                f"{stages['letterbox']:.2f} ms ({cpu['resizer']}; {stages['letterbox_warm']:.2f} warm), inference "
                f"{stages['inference']:.2f} ms, post-processing {stages['postprocess']:.2f} ms "
                f"({stages['postprocess_warm']:.2f} warm)"
            )
        print(
            f"  INT8 / FP32 bare run {t['int8_vs_fp32_bare']['median']:.3f}x; overhead around the model: "
            f"FP32 {t['fp32_detector']['median'] - t['fp32_bare']['median']:+.2f} ms, "
            f"INT8 {t['int8_detector']['median'] - t['int8_bare']['median']:+.2f} ms"
        )
        alternatives = t["alternatives"]
        same = ", ".join(f"{k.removesuffix('_same_tensors')} {v}" for k, v in alternatives.items() if "same" in k)
        print(f"  the same tensors from the numpy detector, with its letterbox: {same}")
        if "opencv_mb" in alternatives and alternatives["opencv_mb"] is not None:
            print(f"  {alternatives['opencv']} installs {alternatives['opencv_mb']:.0f} MB")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    started_under = conditions()
    work = RESULTS_DIR / "work"
    models = choose_models(args, work)
    frames_dir, files = choose_frames(args, work)
    if not files:
        parser.error(f"no frames in {frames_dir}")
    if not models.int8.is_file():
        calibration = args.calibration or (args.dataset / "images" / "train" if args.dataset else frames_dir)
        quantize_here(models, calibration, work / "quantized" / models.fp32.parent.name)
    if args.dataset:
        evaluate_both(models, args.dataset, work)

    hd_dir = scaled_frames(files, work / f"frames-{HD[0]}x{HD[1]}-{frames_dir.name}", HD)
    sets = {"frames": files, "hd": frame_files(hd_dir)}
    labels = {"frames": f"{len(files)} frames {_image_size(files[0])}", "hd": f"same at {HD[0]}x{HD[1]}"}
    print(f"\nFP32 model {models.fp32}\nINT8 model {models.int8}\nframes {frames_dir} ({len(files)} files)")
    print(f"conditions at the start: {started_under}\n")
    timing = {
        key: latencies(models, chosen, rounds=args.rounds, ultralytics=key == "frames" and not args.no_ultralytics)
        for key, chosen in sets.items()
    }
    for key, chosen in sets.items():
        timing[key]["cpu"] = cpu_work(models, chosen, rounds=args.rounds)
        timing[key]["alternatives"] = numpy_alternatives(models, chosen, rounds=args.rounds)
    extra = device_figures(models, files)
    extra["dependency_mb"], sizes = dependency_size_mb(REQUIREMENTS)
    figures = report(models, timing, extra, labels)

    print_timing(timing, labels)
    print(f"  device process loaded: {extra['fp32_rss']['heavy'] or 'no torch, ultralytics or cv2'}")
    print("  dependency sizes: " + ", ".join(f"{name} {mb:.1f}" for name, mb in sizes.items()) + " (MB)")
    print(f"conditions at the end: {conditions()}\n")
    for figure in figures:
        print(figure.line())
    (RESULTS_DIR / "figures.json").write_text(
        json.dumps(
            {
                "fp32_model": str(models.fp32),
                "int8_model": str(models.int8),
                "map50": models.map50,
                "timing": timing,
                "extra": {k: v for k, v in extra.items() if not k.endswith("_rss")},
                "dependency_mb": sizes,
                "figures": [figure.to_json() for figure in figures],
                "conditions": {"start": started_under, "end": conditions()},
            },
            indent=1,
        )
    )
    return 0


def _image_size(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return f"{image.width}x{image.height}"


if __name__ == "__main__":
    sys.exit(main())
