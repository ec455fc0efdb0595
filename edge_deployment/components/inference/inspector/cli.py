"""Run the device detector over a folder of images, without Greengrass.

    python -m edge_deployment.inference --model MODEL.onnx --images DIR [--output FILE] [--conf C] [--iou I]
        [--precision auto|int8|fp32] [--providers cuda,cpu]

(on a device, from the unzipped artifact: `python -m inspector.cli ...`). Writes one JSON line per
image: {"image": path, "detections": [{"box": [x1, y1, x2, y2], "class_id", "class_name", "score"}]}
with boxes in source-image pixels. Images that cannot be read are logged (stderr) and skipped;
the exit status is 0 when every image was read, 1 when some were not, 2 for a bad model or folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

from .config import PRECISION_SETTINGS
from .detector import IMAGE_SUFFIXES, Detector, DetectorError, ImageError, load_detector

LOG = logging.getLogger("inspector.cli")


def image_files(directory: Path) -> list[Path]:
    """The image files directly in `directory` (by suffix), sorted by name."""
    return sorted(path for path in directory.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def detect_folder(detector: Detector, images: Iterable[Path], output: TextIO) -> tuple[int, int]:
    """Write one JSON line per readable image; (images written, images that failed)."""
    written = failed = 0
    for path in images:
        try:
            result = detector.detect_file(path)
        except ImageError as error:
            failed += 1
            LOG.error("skipped: %s", error)
            continue
        line = {"image": str(path), "detections": [detection.to_json() for detection in result.detections]}
        output.write(json.dumps(line) + "\n")
        output.flush()
        written += 1
    return written, failed


def _threshold(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m edge_deployment.inference",
        description="Run the edge detector (onnxruntime, no Greengrass) over a folder of images; one JSON line each.",
    )
    result.add_argument("--model", required=True, type=Path, help="model.onnx (model.json beside it is used)")
    result.add_argument("--images", required=True, type=Path, help="folder of images (jpg, png, bmp, tif, webp)")
    result.add_argument("--output", type=Path, help="JSON lines file (default: standard output)")
    result.add_argument("--conf", type=_threshold, help="confidence threshold (default: model.json's, else 0.25)")
    result.add_argument("--iou", type=_threshold, help="NMS IoU threshold (default: model.json's, else 0.7)")
    result.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: one per core)")
    result.add_argument(
        "--precision",
        choices=PRECISION_SETTINGS,
        help="choose among the files model.json lists, as the component does (default: the --model file itself)",
    )
    result.add_argument(
        "--providers",
        type=lambda text: [name for name in text.split(",") if name],
        default=["cpu"],
        help="onnxruntime execution providers in order of preference, e.g. cuda,cpu (default: cpu)",
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.images.is_dir():
        LOG.error("--images %s: not a folder", args.images)
        return 2
    try:
        detector = load_detector(
            args.model,
            confidence_threshold=args.conf,
            iou_threshold=args.iou,
            threads=args.threads,
            precision=args.precision,
            providers=args.providers,
        )
    except (DetectorError, ValueError) as error:
        LOG.error("cannot use the model: %s", error)
        return 2
    LOG.info(
        "serving %s (%s) on %s%s",
        detector.model_path.name,
        detector.precision.upper(),
        detector.execution_provider,
        "".join(f"; {warning}" for warning in detector.warnings),
    )
    images = image_files(args.images)
    if args.output is None:
        try:
            written, failed = detect_folder(detector, images, sys.stdout)
        except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences the flush at interpreter exit
            return 0
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with args.output.open("w", encoding="utf-8") as handle:
            written, failed = detect_folder(detector, images, handle)
    LOG.info(
        "%d image(s) processed, %d skipped (conf %.3g, iou %.3g)%s",
        written,
        failed,
        detector.confidence_threshold,
        detector.iou_threshold,
        f", results in {args.output}" if args.output else "",
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
