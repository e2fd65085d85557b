"""Core library of the PDAC lymph-node metastasis product.

Pure functions and types shared by the MONAI Deploy operators (``operators/``), the training
commands (``training/``), the evaluation scripts and the synthetic study generator: label
definitions, configuration, geometry helpers, the attention map, networks and model files.
Nothing here depends on Holoscan, so every piece is testable on its own.
"""

__version__ = "0.1.0"
