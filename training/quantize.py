"""Quantize any YOLOv8 ONNX detection model to INT8 (static, QDQ), calibrated on a folder of images.

    .venv/bin/python -m training.quantize --model M.onnx --calibration DIR --output Q.onnx [--images N] [--method M]

The calibration folder (searched recursively) should hold images like the ones the model will see:
its training images. The decoding tail of the model (box decoding, class sigmoid) stays in float;
see training/steps/quantize.py. After writing the file, the command runs both models on a few of the
calibration images and prints how far the INT8 output is from FP32's. Exit status 0 on success,
1 when the model or the folder cannot be used (the model must have opset 13 or later and one image
input) or when --output is the model itself: the FP32 model is never overwritten.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from training.steps.quantize import CALIBRATION_METHODS, DEFAULT_CALIBRATION_IMAGES, QuantizationError, quantize_model


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.quantize",
        description="Quantize a YOLOv8 ONNX model to INT8 (onnxruntime static quantization, QDQ).",
    )
    parser.add_argument("--model", type=Path, required=True, help="the FP32 ONNX model (an Ultralytics export)")
    parser.add_argument("--calibration", type=Path, required=True, help="folder of calibration images")
    parser.add_argument("--output", type=Path, required=True, help="where to write the INT8 model")
    parser.add_argument(
        "--images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help=f"calibration images to use at most, spread over the folder (default {DEFAULT_CALIBRATION_IMAGES})",
    )
    parser.add_argument(
        "--method", choices=CALIBRATION_METHODS, default="minmax", help="activation range calibration (default minmax)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.model.is_file():
        print(f"error: model {args.model} not found", file=sys.stderr)
        return 1
    try:
        result = quantize_model(args.model, args.calibration, args.output, max_images=args.images, method=args.method)
    except QuantizationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    agreement = result.agreement
    print(f"INT8 model: {result.output}")
    print(
        f"calibrated on {result.calibration_images} image(s) ({result.method}); {result.quantized_nodes} "
        f"quantize/dequantize nodes; {len(result.float_nodes)} decoding nodes kept in float"
    )
    print(
        f"against FP32 on {agreement['frames']:.0f} calibration frame(s): largest class score difference "
        f"{agreement['max_score_difference']:.4f}, mean box difference {agreement['mean_box_difference_px']:.2f} px "
        f"(top score {agreement['top_score_fp32']:.3f} FP32, {agreement['top_score_int8']:.3f} INT8)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
