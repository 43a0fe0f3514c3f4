"""Inference: loading any model file (load.py), one predictor interface over ONNX Runtime, PyTorch and fastai
backends, the ONNX and int8 exports, and image embeddings."""
