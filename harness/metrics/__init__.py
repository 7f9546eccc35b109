"""Metrics that need more than (output, example): model-level metrics such as perplexity."""

from __future__ import annotations


def model_metric_names() -> list[str]:
    """Suite scorer names the runner computes with the model itself (not from the output text)."""
    return ["perplexity"]
