"""Inference: one predictor interface over fastai, PyTorch and ONNX Runtime backends, and image embeddings."""
