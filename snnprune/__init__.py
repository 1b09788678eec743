"""snnprune: prune snnTorch spiking neural networks with spike-probability criteria."""

__version__ = "0.1.0"
