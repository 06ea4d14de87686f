"""ray-app: train, calibrate and serve Hugging Face classifiers on Ray."""

__version__ = "0.1.0"
