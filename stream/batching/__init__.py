"""Adaptive batching: buffer waiting requests, form batches, run them on a backend."""
