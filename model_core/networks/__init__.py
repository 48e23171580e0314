"""Networks: backbones, the incremental classifier, and generators for generative replay."""

from model_core.networks.classifier import IncrementalClassifier, create_network

__all__ = ["IncrementalClassifier", "create_network"]
