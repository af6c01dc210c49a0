"""xai_core: the shared inference core of the explainable chest X-ray dashboard."""

__version__ = "0.1.0"
