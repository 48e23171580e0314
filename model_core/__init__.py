"""Engram's learning engine: incremental classifiers, continual-learning strategies, metrics, bundles.

Importing this package does not import torch; import the submodules you need.
"""

__version__ = "0.1.0"
