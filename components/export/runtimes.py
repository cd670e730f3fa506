"""The exported files run in their own runtimes, without TensorFlow: ONNX Runtime for .onnx, the LiteRT
interpreter (ai-edge-litert) for .tflite. Both take what the SavedModel's `predict_pixels` signature takes once
resized: float32 [N, S, S, 3], RGB, 0..255 (the rescaling is inside the model), and give [N, K] probabilities."""

from __future__ import annotations

import time

import numpy as np

INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
# Latency: the median of LATENCY_RUNS calls on one image, after WARMUP_RUNS (the first calls allocate and plan).
WARMUP_RUNS = 10
LATENCY_RUNS = 100


class OnnxModel:
    def __init__(self, path: str):
        import onnxruntime

        self.runtime = f"onnxruntime {onnxruntime.__version__}"
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: pixels.astype(np.float32)})[0]


class TfliteModel:
    """One image per call: the file's batch dimension is 1 (resizable, but a phone runs one image at a time)."""

    def __init__(self, path: str):
        from ai_edge_litert import interpreter

        self.runtime = f"ai-edge-litert {_version('ai-edge-litert')}"
        self.interpreter = interpreter.Interpreter(model_path=path)
        self.runner = self.interpreter.get_signature_runner()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = pixels.astype(np.float32)
        return np.concatenate([self.runner(**{INPUT_NAME: pixels[i:i + 1]})[OUTPUT_NAME] for i in range(len(pixels))])


def load(path: str):
    return OnnxModel(path) if path.endswith(".onnx") else TfliteModel(path)


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


def latencies_ms_p50(predictors: list, image: np.ndarray) -> list[float]:
    """The median milliseconds of one call on one image [1, S, S, 3], for each predictor. Their calls alternate,
    so a busy machine slows them alike and the comparison holds even when the absolute numbers move."""
    for _ in range(WARMUP_RUNS):
        for predict in predictors:
            predict(image)
    times = [[] for _ in predictors]
    for _ in range(LATENCY_RUNS):
        for predict, kept in zip(predictors, times):
            start = time.perf_counter()
            predict(image)
            kept.append(time.perf_counter() - start)
    return [float(np.median(kept) * 1000) for kept in times]
