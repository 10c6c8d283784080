"""Baseline language models, on CVFP's tokens, frozen embeddings and tied head.

- :mod:`newllm.baselines.ngram`     interpolated (modified) Kneser-Ney n-gram LM, numpy/scipy
- :mod:`newllm.baselines.models`    ``LSTMLM``, ``TransformerLM``, parameter matching, FLOPs
- :mod:`newllm.baselines.training`  one trainer (Adam, clipping, early stopping on dev)

``ngram`` imports no torch; the other two do.
"""
