"""Run the edge detector over a folder of images, the way the device runs it, without Greengrass.

    python -m edge_deployment.inference --model MODEL.onnx --images DIR [--output FILE] [--conf C] [--iou I]

One JSON line per image: {"image": path, "detections": [{"box": [x1, y1, x2, y2], "class_id": int,
"class_name": str, "score": float}, ...]}, boxes in source-image pixels. The code is the device
component's (edge_deployment/components/inference/inspector); see its README.md.
"""

from __future__ import annotations

import sys

from edge_deployment.components.inference.inspector.cli import main

if __name__ == "__main__":
    sys.exit(main())
