"""Generative-model backends: what the IPL stages need from a generator, per model family."""
