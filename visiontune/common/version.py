"""visiontune's version, in a leaf module so that run artifacts can record it."""

__version__ = "0.1.0"
