"""wsimil: max-pooling vs attention multiple-instance learning on whole-slide images, from slides to figures."""

__version__ = "0.1.0"
