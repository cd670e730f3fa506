"""Stage 6: the trained SavedModel exported to TFLite (LiteRT) and ONNX, with parity and speed measured."""
