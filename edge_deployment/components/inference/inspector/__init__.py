"""The edge inference component: a YOLOv8 ONNX detector served on a Greengrass core device.

Runs from the unzipped component artifact with only requirements.txt installed (onnxruntime,
numpy, Pillow, awsiotsdk): no PyTorch, no Ultralytics, nothing from the rest of the repository.

- detector: image decoding, letterbox, inference and NMS (matches Ultralytics' ONNX prediction)
- config: the component configuration keys, defaults and checks
- service: the component loop (results, heartbeat, feedback, configuration updates)
- frame_sources: where frames come from (a watched folder, or a camera through OpenCV)
- model_manager: the model being served, and swapping in new versions between frames
- feedback: the durable upload queue and the S3 uploader
- greengrass: the Greengrass IPC adapter
- cli: run the detector over a folder without Greengrass
"""

__version__ = "1.0.0"
