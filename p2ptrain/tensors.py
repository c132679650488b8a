"""The one name for what algorithms, attacks and fragments pass around: tensors by name."""

from __future__ import annotations

import torch

Tensors = dict[str, torch.Tensor]
