"""featx: transfer learning for image classification from cached features."""

__version__ = "0.1.0"
