"""Specs for any timm architecture (``timm:<name>``), derived from timm's own pretrained config.

The model is built on the meta device (no memory, no init cost) to count parameters and FLOPs and to
turn timm's coarse ``group_matcher`` into the catalog's ``blocks``. The weights are the user's to supply
(``select.weights``); timm's published file is named as the ``hub:`` default so that a copy in the
torch hub cache folder is found.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from pipeline.models.cost import count_params, measure_gflops
from pipeline.models.specs import ModelSpec, WeightsRef

__all__ = ["timm_spec", "blocks_from_groups"]

_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.(pth|pt|bin|safetensors)$")


def timm_spec(arch: str) -> ModelSpec:
    """Derive the spec of a timm architecture.

    Args:
        arch: a timm model name (``timm.list_models()``), optionally with a ``.tag``.
    Returns:
        The spec, named ``timm:<arch>``.
    Raises:
        KeyError: timm does not know the name.
    """
    import timm

    if not timm.is_model(arch):
        raise KeyError(f"unknown model 'timm:{arch}': timm has no model {arch!r} "
                       f"(timm.list_models('*{arch.split('.')[0][:6]}*') lists similar names)")
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    cfg = model.pretrained_cfg
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    head = cfg.get("classifier", "head")
    return ModelSpec(
        name=f"timm:{arch}", arch=arch, family="timm", weights=_default_weights(cfg),
        params=count_params(model), gflops=round(measure_gflops(model, size), 3), input_size=size,
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))), std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        feature_dim=int(model.num_features), head=head,
        blocks=blocks_from_groups(model, model.group_matcher(coarse=True), head),
        licence=str(cfg.get("license", "see the model card")),
        source=f"timm {arch} ({cfg.get('hf_hub_id') or cfg.get('url') or 'no published weights'}), user-supplied file",
        fixed_input_size=bool(cfg.get("fixed_input_size", False)),
        min_input_size=size if cfg.get("fixed_input_size") else 32,
        interpolation=str(cfg.get("interpolation", "bicubic")),
    )


def _default_weights(cfg: dict) -> WeightsRef:
    url = cfg.get("url") or ""
    file = url.rsplit("/", 1)[-1] or f"{cfg.get('architecture', 'model')}.pth"
    match = _HASH_IN_NAME.search(file)
    return WeightsRef(f"hub:{file}", match.group(1) if match else None, url=url or None,
                      published_prefix=bool(match))


def blocks_from_groups(model: nn.Module, matcher: dict, head: str) -> tuple[str, ...]:
    """Turn timm's coarse parameter groups into ``+``-joined name prefixes, stem to head.

    Args:
        model: the timm model.
        matcher: ``model.group_matcher(coarse=True)``.
        head: the classifier path; its parameters form the last block whatever timm groups them with.
    Returns:
        The blocks.
    """
    from timm.models import group_parameters

    groups = group_parameters(model, matcher)
    head_params = [n for n in groups.get(max(groups), []) if n == head or n.startswith(head + ".")]
    owner = {name: gid for gid, names in groups.items() for name in names if name not in head_params}
    blocks = [_covering_prefixes(names, owner, gid) for gid, names in groups.items()
              if any(n not in head_params for n in names)]
    return (*blocks, head)


def _covering_prefixes(names: list[str], owner: dict[str, int], gid: int) -> str:
    # Shortest dotted prefixes whose parameters all belong to this group: "blocks.0" not its 40 tensors.
    chosen: list[str] = []
    for name in names:
        if name not in owner or any(name.startswith(p + ".") for p in chosen):
            continue
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            under = [n for n in owner if n == prefix or n.startswith(prefix + ".")]
            if all(owner[n] == gid for n in under):
                chosen.append(prefix)
                break
    return "+".join(chosen)
