"""Inference: running trained models outside training.

:mod:`dsa.inference.export`: a :class:`~dsa.model.TransformerLM` (dense or DSA) to ONNX through the reference
ops, checked on onnxruntime (``python -m dsa.inference.export --checkpoint CKPT --output model.onnx``; needs the
``onnx`` extra). Importing this package imports no extra.
"""
