"""Freezing primitives: which block a parameter belongs to, ``freeze_to``, BatchNorm policy, per-block lrs.

A network is described by an ordered list of block names (module names, from stem to head, as in
``ModelSpec.blocks``); a parameter or module belongs to the block whose name is its longest prefix.
Every strategy (linear probe, partial, full, gradual, LP-FT) is a composition of one primitive,
:func:`freeze_to`, which freezes the first ``n`` blocks and unfreezes the rest.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

__all__ = ["BN_POLICIES", "block_of", "block_param_counts", "freeze_to", "set_train_mode",
           "block_lrs", "param_groups"]

# frozen: BatchNorm inside frozen blocks keeps its running statistics (eval mode), the rest adapt.
# train: every BatchNorm updates its statistics, frozen blocks included (their affine stays fixed).
# eval_all: no BatchNorm updates statistics (small data: batch statistics are noise).
BN_POLICIES = ("frozen", "train", "eval_all")


def block_of(name: str, blocks: Sequence[str]) -> int | None:
    """Return the index of the block owning a parameter or module name (longest prefix), or None.

    Args:
        name: a dotted parameter or module name, e.g. ``blocks.3.0.conv_pw.weight``.
        blocks: ordered block names; one entry may join several names with ``+`` (``conv_stem+bn1``).
    Returns:
        The block index, or None when no block name is a prefix of ``name``.
    """
    best, best_len = None, -1
    for index, entry in enumerate(blocks):
        for prefix in entry.split("+"):
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def _param_blocks(model: nn.Module, blocks: Sequence[str]) -> list[tuple[str, nn.Parameter, int]]:
    """(name, parameter, block index) for every parameter; an unowned parameter is an error."""
    owned = []
    for name, param in model.named_parameters():
        index = block_of(name, blocks)
        if index is None:
            raise ValueError(f"parameter {name!r} belongs to none of the blocks {list(blocks)}: "
                             "the block list must cover the whole network from stem to head")
        owned.append((name, param, index))
    return owned


def block_param_counts(model: nn.Module, blocks: Sequence[str]) -> list[int]:
    """Return the number of parameter elements in each block, in block order."""
    counts = [0] * len(blocks)
    for _, param, index in _param_blocks(model, blocks):
        counts[index] += param.numel()
    return counts


def freeze_to(model: nn.Module, blocks: Sequence[str], n: int) -> list[str]:
    """Freeze the first ``n`` blocks and unfreeze all later ones.

    Args:
        model: the network.
        blocks: ordered block names, stem first, head last.
        n: how many leading blocks to freeze (0 = train everything; len(blocks) - 1 = head only).
    Returns:
        The names of the frozen parameters.
    """
    if not 0 <= n < len(blocks):
        raise ValueError(f"freeze depth {n} is out of range: the head must stay trainable, "
                         f"so 0 <= n <= {len(blocks) - 1} for {len(blocks)} blocks")
    frozen = []
    for name, param, index in _param_blocks(model, blocks):
        param.requires_grad_(index >= n)
        if index < n:
            frozen.append(name)
    return frozen


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def set_train_mode(model: nn.Module, blocks: Sequence[str], n_frozen: int, bn_policy: str) -> None:
    """Put the model in training mode, then BatchNorm layers in eval mode as the policy says.

    ``model.train()`` resets every module, so call this at the start of every training epoch.

    Args:
        model: the network (or its DDP-wrapped inner module).
        blocks: ordered block names.
        n_frozen: how many leading blocks are frozen.
        bn_policy: one of BN_POLICIES.
    """
    if bn_policy not in BN_POLICIES:
        raise ValueError(f"bn_policy {bn_policy!r} is not one of {', '.join(BN_POLICIES)}")
    model.train()
    if bn_policy == "train":
        return
    for name, module in model.named_modules():
        if not _is_batchnorm(module):
            continue
        index = block_of(name, blocks)
        if bn_policy == "eval_all" or (index is not None and index < n_frozen):
            module.eval()


def block_lrs(blocks: Sequence[str], n_frozen: int, lr: float, layer_decay: float = 1.0) -> dict[str, float]:
    """Learning rate of each trainable block: ``lr`` at the head, times ``layer_decay`` per block below.

    Args:
        blocks: ordered block names, head last.
        n_frozen: how many leading blocks are frozen (they get no entry).
        lr: the head's learning rate.
        layer_decay: factor per block of depth below the head (1.0 = one lr for all).
    Returns:
        Block name -> learning rate, for the trainable blocks only.
    """
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay = {layer_decay}: must be in (0, 1]")
    last = len(blocks) - 1
    return {blocks[i]: lr * layer_decay ** (last - i) for i in range(n_frozen, len(blocks))}


def param_groups(model: nn.Module, blocks: Sequence[str], lrs: dict[str, float],
                 weight_decay: float) -> list[dict]:
    """Optimizer parameter groups, one per trainable block, holding only parameters that need grads.

    Args:
        model: the network, already frozen by :func:`freeze_to`.
        blocks: ordered block names.
        lrs: block name -> learning rate (from :func:`block_lrs`).
        weight_decay: weight decay for every group.
    Returns:
        Groups for ``torch.optim``: dicts with params, lr, weight_decay and the block name.
    """
    by_block: dict[str, list[nn.Parameter]] = {name: [] for name in lrs}
    for name, param, index in _param_blocks(model, blocks):
        if not param.requires_grad:
            continue
        if blocks[index] not in lrs:
            raise ValueError(f"parameter {name!r} is trainable but block {blocks[index]!r} has no "
                             f"learning rate in the plan (planned: {sorted(lrs)})")
        by_block[blocks[index]].append(param)
    return [{"params": params, "lr": lrs[block], "weight_decay": weight_decay, "block": block}
            for block, params in by_block.items() if params]

