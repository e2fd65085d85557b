"""The MONAI Deploy application that predicts lymph-node metastasis of PDAC from two-phase CT.

``python app -i INPUT -o OUTPUT -m MODELS``; see :mod:`app.application` for the graph and
:mod:`app.startup` for the checks made before any work.
"""
