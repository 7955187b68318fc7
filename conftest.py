"""Test session set-up: on a machine without a GPU, Triton kernels run under its interpreter.

``TRITON_INTERPRET`` must be set before triton is first imported, so this runs first.
"""

import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
