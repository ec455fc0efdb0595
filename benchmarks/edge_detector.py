"""Benchmark of the edge detector (the inference component's `inspector` package). Prints figures; asserts nothing.

    .venv/bin/python benchmarks/edge_detector.py                      # trains a small model on synthetic tags first
    .venv/bin/python benchmarks/edge_detector.py --model M.onnx --images DIR

Without --model it trains YOLOv8n with the project's own training code (`training.local.run_local`)
on synthetic tags, offline, and writes held-out synthetic frames; everything goes under
benchmarks/results/edge-detector/ (git-ignored). Then, on that model and those frames, in one run:

1. per-frame latency of `Detector.detect` (letterbox + inference + NMS) against a bare
   `InferenceSession.run` on an already prepared tensor             goal: <= 1.10x
2. the same against Ultralytics' own ONNX prediction (`YOLO(model.onnx).predict`)   goal: faster
3. peak RSS of a fresh process that imports only the device package and serves every frame
                                                                      goal: <= 150 MB
4. process start to first result (`python -m inspector.cli` on one frame, fresh process)
                                                                      goal: <= 1 s
5. installed size of the device dependencies (requirements.txt and everything they pull in,
   measured from the installed distributions' file lists)            goal: <= 200 MB

Latencies are medians over --frames frames after a warm-up, all methods on the same decoded frames
and with onnxruntime's default threading.
"""

# ruff: noqa: PLC0415, S603 - heavy imports only where used; subprocesses run this interpreter

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")  # Ultralytics must not reach the internet

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPONENT_DIR = REPO_ROOT / "edge_deployment" / "components" / "inference"
REQUIREMENTS = COMPONENT_DIR / "requirements.txt"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results" / "edge-detector"
sys.path.insert(0, str(REPO_ROOT))

# The device process of figures 3 and 4: the component folder alone on the path, as on a device.
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
    value: float
    unit: str
    goal: str
    met: bool

    def line(self) -> str:
        verdict = "met" if self.met else "NOT MET"
        return f"{self.name:<54} {self.value:>8.2f} {self.unit:<3} goal {self.goal:<12} {verdict}"


# --------------------------------------------------------------------------------------------------
# Model and frames
# --------------------------------------------------------------------------------------------------


def train_model(output: Path, *, images: int, epochs: int, image_size: int) -> Path:
    """model.onnx + model.json trained by the project's training code on synthetic tags (offline)."""
    import tarfile

    from shared.config import DEFAULT_CONFIG_FILE, load_settings
    from training.local import LocalRunOptions, run_local, write_synthetic_source

    settings = load_settings(DEFAULT_CONFIG_FILE)
    source = write_synthetic_source(output / "source", images, num_classes=len(settings.project.class_names), seed=11)
    options = LocalRunOptions.from_settings(
        settings, epochs=epochs, image_size=image_size, batch_size=16, min_images=20, device="cpu", workers=0
    )
    started = time.perf_counter()
    result = run_local(
        offline_store=source.offline_store, images=source.images, output=output / "run", options=options, log=print
    )
    print(f"trained in {time.perf_counter() - started:.0f} s: {result.archive}")
    model_dir = output / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(result.archive) as archive:
        archive.extractall(model_dir, filter="data")
    return model_dir / "model.onnx"


def write_frames(directory: Path, count: int, *, width: int, height: int) -> Path:
    from shared.synthetic import write_dataset

    write_dataset(directory, count, seed=2024, width=width, height=height)
    return directory


def frame_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------


def interleaved_medians(
    methods: dict[str, Callable[[int], object]], *, frames: int, warmup: int = 5
) -> dict[str, float]:
    """Median ms per call of each method; the methods take turns on every frame, so a busy machine
    (other processes on the same cores) slows them alike instead of whichever ran during the rush."""
    for index in range(warmup):
        for run in methods.values():
            run(index)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for index in range(frames):
        for name, run in methods.items():
            started = time.perf_counter()
            run(index)
            times[name].append((time.perf_counter() - started) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}


def latencies(model: Path, files: list[Path], *, frames: int) -> dict[str, float]:
    """Per-frame latency: the detector, a bare session on prepared tensors, Ultralytics; same decoded frames."""
    import numpy as np
    import onnxruntime
    from ultralytics import YOLO

    from edge_deployment.components.inference.inspector.detector import load_detector, load_image

    detector = load_detector(model)
    images = [load_image(path) for path in files]
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    tensors = [np.array(detector.prepare(image)[0]) for image in images]  # prepared once, outside the timing
    yolo = YOLO(str(model), task="detect")
    bgr = [np.ascontiguousarray(image[..., ::-1]) for image in images]  # Ultralytics takes OpenCV's BGR arrays
    settings: dict[str, Any] = {
        "conf": detector.confidence_threshold,
        "iou": detector.iou_threshold,
        "imgsz": detector.input_width,
        "verbose": False,
        "device": "cpu",
    }
    count = len(images)
    figures = interleaved_medians(
        {
            "detector_ms": lambda i: detector.detect(images[i % count]),
            "bare_run_ms": lambda i: session.run(None, {name: tensors[i % count]}),
            "ultralytics_ms": lambda i: yolo.predict(bgr[i % count], **settings),
            "decode_ms": lambda i: load_image(files[i % count]),
        },
        frames=frames,
    )
    figures["input_size"] = detector.input_width
    return figures


def device_env() -> dict[str, str]:
    return {"PYTHONPATH": str(COMPONENT_DIR), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(Path.home())}


def peak_rss_mb(model: Path, frames_dir: Path, *, rounds: int) -> tuple[float, dict[str, Any]]:
    completed = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(model), str(frames_dir), str(rounds)],
        capture_output=True,
        text=True,
        env=device_env(),
        timeout=600,
        check=True,
    )
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return report["peak_rss_kb"] / 1024.0, report


def start_to_first_result_s(model: Path, frame: Path, *, runs: int) -> float:
    """From starting `python -m inspector.cli` on one frame to reading its JSON line (median of runs)."""
    with tempfile.TemporaryDirectory() as folder:
        single = Path(folder)
        (single / frame.name).write_bytes(frame.read_bytes())
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
            process.wait(timeout=60)
            if not line.startswith("{"):
                raise RuntimeError(f"inspector.cli gave no result line (exit {process.returncode})")
    return statistics.median(times)


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
        distribution = metadata.distribution(name)
        size = 0
        for file in distribution.files or []:
            path = Path(str(distribution.locate_file(file)))
            if path.is_file() and "__pycache__" not in path.parts:
                size += path.stat().st_size
        seen[name] = size / 1e6
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.append(requirement.name)
    return sum(seen.values()), dict(sorted(seen.items(), key=lambda item: -item[1]))


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model.onnx (model.json beside it is used); default: train one")
    parser.add_argument("--images", type=Path, help="folder of frames; default: synthetic tags")
    parser.add_argument("--frames", type=int, default=60, help="timed frames per method (default 60)")
    parser.add_argument("--train-images", type=int, default=96, help="synthetic training images (default 96)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    parser.add_argument("--image-size", type=int, default=320, help="model input size when training (default 320)")
    parser.add_argument("--frame-size", default="640x480", help="synthetic frame size WxH (default 640x480)")
    args = parser.parse_args(argv)

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    model = args.model or train_model(
        RESULTS_DIR / "trained", images=args.train_images, epochs=args.epochs, image_size=args.image_size
    )
    if args.images:
        frames_dir = args.images
    else:
        width, height = (int(v) for v in args.frame_size.lower().split("x"))
        frames_dir = write_frames(RESULTS_DIR / f"frames-{width}x{height}", 20, width=width, height=height)
    files = frame_files(frames_dir)
    if not files:
        parser.error(f"no frames in {frames_dir}")

    print(f"\nmodel {model}\nframes {frames_dir} ({len(files)} files)\n")
    timing = latencies(model, files, frames=args.frames)
    rss_mb, rss_report = peak_rss_mb(model, frames_dir, rounds=3)
    start_s = start_to_first_result_s(model, files[0], runs=3)
    size_mb, sizes = dependency_size_mb(REQUIREMENTS)

    ratio = timing["detector_ms"] / timing["bare_run_ms"]
    figures = [
        Figure("detector latency / bare InferenceSession.run", ratio, "x", "<= 1.10x", ratio <= 1.10),
        Figure(
            "detector latency / Ultralytics ONNX predict",
            timing["detector_ms"] / timing["ultralytics_ms"],
            "x",
            "< 1 (faster)",
            timing["detector_ms"] < timing["ultralytics_ms"],
        ),
        Figure("peak RSS of the running detector (device code only)", rss_mb, "MB", "<= 150 MB", rss_mb <= 150),
        Figure("process start to first result", start_s, "s", "<= 1 s", start_s <= 1.0),
        Figure("installed device dependencies", size_mb, "MB", "<= 200 MB", size_mb <= 200),
    ]
    print(f"input {timing['input_size']:.0f} px, {len(files)} frames of {frames_dir.name}, {os.cpu_count()} CPUs")
    print(f"  detector (letterbox + inference + NMS) {timing['detector_ms']:8.2f} ms/frame (median)")
    print(f"  bare InferenceSession.run              {timing['bare_run_ms']:8.2f} ms/frame")
    print(f"  Ultralytics ONNX predict               {timing['ultralytics_ms']:8.2f} ms/frame")
    print(f"  decoding a frame (not in the above)    {timing['decode_ms']:8.2f} ms/frame")
    print(f"  device process loaded: {rss_report['heavy'] or 'no torch, ultralytics or cv2'}")
    print("  dependency sizes: " + ", ".join(f"{name} {mb:.1f}" for name, mb in sizes.items()) + " (MB)\n")
    for figure in figures:
        print(figure.line())
    (RESULTS_DIR / "figures.json").write_text(
        json.dumps(
            {"timing": timing, "rss_mb": rss_mb, "start_s": start_s, "dependency_mb": sizes, "model": str(model)},
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
