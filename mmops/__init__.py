"""mmops: the open back office of a multi-pair crypto market maker."""

__version__ = "0.1.0"
