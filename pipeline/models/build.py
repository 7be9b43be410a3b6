"""Building catalog networks: architecture, verified pretrained weights, a fresh head.

Every model comes out with timm's API (``forward_features``, ``forward_head(x, pre_logits=True)``,
``get_classifier``, ``reset_classifier``, ``num_features``); torchvision networks get it from
:class:`TorchvisionBackbone`.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

from pipeline.common.logs import get_logger
from pipeline.models.efficientnet_lite import map_lukemelas_to_timm
from pipeline.models.specs import ModelSpec, WeightsRef
from pipeline.models.weights import load_state_dict, locate_weights

__all__ = ["build_network", "build_architecture", "load_pretrained", "TorchvisionBackbone"]
log = get_logger(__name__)


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier with timm's feature/head API.

    The classifier at ``head_path`` moves out of the network to ``self.head`` (an ``Identity`` takes
    its place), so ``net(x)`` returns the pooled pre-logit embedding.
    """

    def __init__(self, net: nn.Module, head_path: str):
        super().__init__()
        head = net.get_submodule(head_path)
        if not isinstance(head, nn.Linear):
            raise TypeError(f"{type(net).__name__}.{head_path} is a {type(head).__name__}, not the Linear classifier")
        net.set_submodule(head_path, nn.Identity())
        self.net, self.head, self.head_path, self.num_features = net, head, head_path, head.in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features (torchvision pools inside the network)."""
        return self.net(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The classifier on pooled features; identity when ``pre_logits``."""
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The classifier module."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh ``num_classes`` one (Identity for 0, as in timm)."""
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def load_network_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state dict saved from the plain torchvision network (its classifier included)."""
        prefix = self.head_path + "."
        self.load_state_dict({"head." + k.removeprefix(prefix) if k.startswith(prefix) else "net." + k: v
                              for k, v in state.items()})


def _build_timm(spec: ModelSpec) -> nn.Module:
    import timm

    return timm.create_model(spec.arch, pretrained=False)


def _build_torchvision(spec: ModelSpec) -> nn.Module:
    import torchvision

    return TorchvisionBackbone(torchvision.models.get_model(spec.arch, weights=None), spec.net_head)


_BUILDERS: dict[str, Callable[[ModelSpec], nn.Module]] = {"timm": _build_timm, "torchvision": _build_torchvision}


def build_architecture(spec: ModelSpec) -> nn.Module:
    """Build a spec's network with its original (ImageNet) head and untrained weights."""
    return _BUILDERS[spec.family](spec)


def load_pretrained(model: nn.Module, spec: ModelSpec, weights: WeightsRef | None = None,
                    hub_dir: str | os.PathLike | None = None, allow_download: bool = False) -> str:
    """Locate, verify and load a spec's weights into ``model`` (built by :func:`build_architecture`).

    Args:
        model: the network with its original head.
        spec: the spec it was built from.
        weights: where the weights are, overriding ``spec.weights`` (user-supplied files).
        hub_dir: torch hub folder (``hub:`` names, downloads, S3 copies).
        allow_download: allow fetching ``https://`` weights.
    Returns:
        The full sha256 of the loaded file.
    Raises:
        WeightsUnavailable: the file is not here; WeightsRejected: wrong hash or content.
    """
    ref = weights or spec.weights
    state, digest = load_state_dict(locate_weights(ref, hub_dir, allow_download), ref.sha256, ref.published_prefix)
    if ref.key_map == "lukemelas_efficientnet":
        state = map_lukemelas_to_timm(state, model.state_dict())
    if isinstance(model, TorchvisionBackbone):
        model.load_network_state(state)
    else:
        model.load_state_dict(state)
    log.info("loaded %s weights (sha256 %s) from %s", spec.name, digest[:12], ref.uri)
    return digest


def build_network(spec: ModelSpec, num_classes: int, pretrained: bool = True, weights: WeightsRef | None = None,
                  hub_dir: str | os.PathLike | None = None, allow_download: bool = False,
                  seed: int = 0) -> tuple[nn.Module, str | None]:
    """Build a spec's network, load its checked pretrained weights, and give it a fresh ``num_classes`` head.

    Args:
        spec: the catalog spec.
        num_classes: classes of the new head (0: no head, the network returns embeddings).
        pretrained: load the weights (``False``, or a ``.random_init`` spec, gives a seeded random init).
        weights: user-supplied weights overriding the spec's.
        hub_dir: torch hub folder.
        allow_download: allow fetching weights from the internet.
        seed: seed of the random initialisation (architecture and the new head).
    Returns:
        (the network in train mode on the CPU, the full sha256 of the loaded weights or None).
    Raises:
        WeightsUnavailable / WeightsRejected: see :func:`load_pretrained`.
    """
    torch.manual_seed(seed)
    network = build_architecture(spec)
    digest = None
    if pretrained and not spec.weights.is_random_init:
        digest = load_pretrained(network, spec, weights, hub_dir, allow_download)
    network.reset_classifier(num_classes)
    return network, digest
