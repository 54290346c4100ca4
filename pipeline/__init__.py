"""bale: archive container images into object storage and bring them back, streamed."""

__version__ = "0.1.0"
