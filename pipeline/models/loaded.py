"""A loaded model: its spec, its checked weights, its one preprocessing, and inference over datasets.

Every stage that runs a network goes through :class:`LoadedModel`: selection and the linear probes
(``pretrained``), the scratch baseline (``scratch``), and everything that reads a trained model
directory (``load``: evaluation, drift, promotion). So the weights a stage uses are the ones the
selection chose (user-supplied ones included), checked by sha256, and recorded in its outputs
(``fingerprint``); and the pixels it feeds are :class:`~pipeline.models.preprocess.Preprocessing`'s.

A trained model on disk::

    <model_dir>/model.pt    the state dict (torch.save; read back with weights_only=True)
    <model_dir>/card.json   model name, classes, preprocessing, pretrained weights (uri, sha256),
                            the state dict's sha256, and whatever the stage adds (plan, data, metrics)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.common.device import memory_format
from pipeline.common.io import atomic_dir, read_json, sha256_file, write_json
from pipeline.data.shards import ShardImageDataset
from pipeline.models.build import build_network
from pipeline.models.catalog import get_spec
from pipeline.models.cost import Latency, measure_latency
from pipeline.models.inference import BatchOutputs, probabilities, run_batches, split_forward
from pipeline.models.preprocess import Preprocessing
from pipeline.models.specs import ModelSpec, WeightsRef

__all__ = ["LoadedModel", "STATE_DICT", "CARD", "read_card"]
STATE_DICT = "model.pt"
CARD = "card.json"
_REQUIRED = ("model", "classes", "preprocessing", "state_dict_sha256")


def read_card(model_dir: str | os.PathLike) -> dict[str, Any]:
    """A model directory's card, checked for the keys every reader needs."""
    path = Path(model_dir) / CARD
    card = read_json(path)
    missing = [key for key in _REQUIRED if key not in card]
    if missing:
        raise ValueError(f"{path}: model card lacks {missing} (re-run the stage that wrote it)")
    return card


@dataclass
class LoadedModel:
    """A network with everything needed to feed it and to say which weights it holds."""

    name: str
    spec: ModelSpec
    network: nn.Module
    preprocessing: Preprocessing
    weights: dict[str, Any]  # the pretrained weights loaded: uri + sha256; or {"uri": "random-init", "seed"}
    classes: list[str] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    card: dict[str, Any] = field(default_factory=dict)  # the saved card, for a trained model

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def pretrained(cls, name: str, num_classes: int, image_size: int, *, weights: WeightsRef | None = None,
                   hub_dir: str | os.PathLike | None = None, allow_download: bool = False, seed: int = 0,
                   classes: Sequence[str] | None = None, device: torch.device | str = "cpu") -> "LoadedModel":
        """A catalog model with checked pretrained weights and a fresh ``num_classes`` head (0: none).

        Args:
            name: catalog name (``timm:<arch>`` and ``<name>.random_init`` included).
            num_classes: classes of the new head; 0 gives an embedding model.
            image_size: input side the preprocessing resizes to.
            weights: user-supplied weights overriding the spec's (as recorded by selection).
            hub_dir: torch hub folder for ``hub:`` weights.
            allow_download: fetch ``https://`` weights when missing.
            seed: seed of the new head (and of the whole network for ``.random_init`` controls).
            classes: class names, kept for predictions.
            device: where the network goes.
        Raises:
            KeyError: unknown name; WeightsUnavailable / WeightsRejected: weights missing or wrong.
        """
        spec = get_spec(name)
        network, digest = build_network(spec, num_classes, pretrained=True, weights=weights, hub_dir=hub_dir,
                                        allow_download=allow_download, seed=seed)
        ref = weights or spec.weights
        loaded = {"uri": ref.uri, "sha256": digest} if digest else {"uri": "random-init", "seed": seed}
        return cls(name, spec, network, Preprocessing.for_spec(spec, image_size), loaded,
                   list(classes) if classes is not None else None).to(device)

    @classmethod
    def selected(cls, name: str, recorded: Mapping[str, Any] | None, num_classes: int, image_size: int,
                 **kwargs: Any) -> "LoadedModel":
        """The pretrained model with the weights the selection recorded (``{"uri", "sha256", "hub_dir"}``),
        so every stage trains exactly the checked weights that were scored; ``kwargs`` as :meth:`pretrained`."""
        recorded = recorded or {}
        return cls.pretrained(name, num_classes, image_size, weights=_recorded_weights(recorded, get_spec(name)),
                              hub_dir=recorded.get("hub_dir"), **kwargs)

    @classmethod
    def scratch(cls, name: str, num_classes: int, image_size: int, *, seed: int = 0,
                classes: Sequence[str] | None = None, device: torch.device | str = "cpu") -> "LoadedModel":
        """The same architecture from a seeded random initialisation (the from-scratch baseline)."""
        spec = get_spec(name)
        network, _ = build_network(spec, num_classes, pretrained=False, seed=seed)
        return cls(name, spec, network, Preprocessing.for_spec(spec, image_size), {"uri": "random-init", "seed": seed},
                   list(classes) if classes is not None else None).to(device)

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: torch.device | str = "cpu") -> "LoadedModel":
        """A trained model written by :meth:`save`, in eval mode, its state dict checked against the card.

        Raises:
            FileNotFoundError / ValueError: missing files, a card without required keys, a state dict
            whose sha256 differs from the card's.
        """
        model_dir = Path(model_dir)
        card = read_card(model_dir)
        state_path = model_dir / card.get("state_dict", STATE_DICT)
        if not state_path.is_file():
            raise FileNotFoundError(f"{state_path}: state dict missing")
        if sha256_file(state_path) != card["state_dict_sha256"]:
            raise ValueError(f"{state_path}: sha256 differs from {model_dir / CARD} (file changed after saving)")
        spec = get_spec(card["model"])
        network, _ = build_network(spec, len(card["classes"]), pretrained=False)
        network.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
        model = cls(card["model"], spec, network, Preprocessing.from_card(card, spec), dict(card.get("weights") or {}),
                    list(card["classes"]), card=card).to(device)
        model.network.eval()
        return model

    def save(self, model_dir: str | os.PathLike, card: Mapping[str, Any]) -> Path:
        """Write the state dict and the card (this model's identity plus ``card``) into ``model_dir``, atomically.

        Args:
            model_dir: the output directory (replaced whole).
            card: what the stage records besides the model's identity (plan, data, metrics, ...).
        Returns:
            The model directory.
        """
        if self.classes is None:
            raise ValueError(f"{self.name}: a saved model needs its class names")
        with atomic_dir(model_dir) as tmp:
            torch.save({k: v.detach().cpu() for k, v in self.network.state_dict().items()}, tmp / STATE_DICT)
            write_json(tmp / CARD, {**card, **self.identity(), "state_dict": STATE_DICT,
                                    "state_dict_sha256": sha256_file(tmp / STATE_DICT)})
        self.card = read_card(model_dir)
        return Path(model_dir)

    def identity(self) -> dict[str, Any]:
        """What a card says about the model itself: name, architecture, classes, preprocessing, weights."""
        return {"model": self.name, "arch": self.spec.arch, "classes": self.classes,
                "preprocessing": self.preprocessing.to_card(), "weights": dict(self.weights)}

    def fingerprint(self) -> dict[str, Any]:
        """The weights behind this model's outputs: pretrained origin, and the trained state dict if any."""
        return {"model": self.name, "pretrained_weights": dict(self.weights),
                "state_dict_sha256": self.card.get("state_dict_sha256")}

    def to(self, device: torch.device | str) -> "LoadedModel":
        """Move the network to ``device`` in its fastest layout there (in place) and return self."""
        self.device = torch.device(device)
        self.network.to(self.device, memory_format=memory_format(self.device))
        return self

    # --- inputs and inference --------------------------------------------------------------------
    def inputs(self, dataset_dir: str | os.PathLike, split: str | None = None, ids: Sequence[str] | None = None,
               augment: Sequence[nn.Module] = ()) -> ShardImageDataset:
        """A dataset split (or the given ids) as this model's input tensors, with labels."""
        return ShardImageDataset(dataset_dir, split, self.preprocessing.transform(augment), ids=ids)

    def outputs(self, data: Dataset | Iterable, want: Sequence[str] = ("logits",), *, batch_size: int = 256,
                num_workers: int = 0, desc: str | None = None, autocast: Any = None) -> BatchOutputs:
        """Run the network over a dataset (or an iterable of (inputs, labels) batches).

        Args:
            data: from :meth:`inputs`, or any dataset / batch iterable of preprocessed tensors.
            want: ``embeddings`` (pooled pre-logits) and/or ``logits``.
            batch_size: images per forward pass (datasets only).
            num_workers: decoding processes (datasets only).
            desc: progress label.
            autocast: precision context factory (default: full precision).
        Returns:
            The outputs in data order, with labels and the forward time.
        """
        if isinstance(data, (Dataset, ShardImageDataset)):
            data = DataLoader(data, batch_size=batch_size, num_workers=num_workers)
        kwargs = {"autocast": autocast} if autocast is not None else {}
        return run_batches(self.network, split_forward(self.network, want), data, self.device,
                           desc=desc or f"{self.name} {'+'.join(want)}", **kwargs)

    def embed(self, data: Dataset | Iterable, **kwargs: Any) -> np.ndarray:
        """Pooled pre-logit embeddings [N, D] (float32)."""
        return self.outputs(data, ("embeddings",), **kwargs)["embeddings"].numpy()

    def predict(self, data: Dataset | Iterable, **kwargs: Any) -> tuple[np.ndarray, np.ndarray, float]:
        """(class probabilities [N, C] float64 with rows summing to 1, labels [N], images per second)."""
        out = self.outputs(data, ("logits",), **kwargs)
        return probabilities(out["logits"]), out.labels.numpy(), out.images_per_s

    def image_batches(self, images: Sequence[Image.Image], batch_size: int = 64) -> Iterator[tuple[torch.Tensor,
                                                                                                   torch.Tensor]]:
        """In-memory upright RGB PIL images (pipeline.data.images.decode_rgb) as preprocessed (inputs, 0) batches."""
        transform = self.preprocessing.transform()
        for start in range(0, len(images), batch_size):
            yield from self.input_batches([transform(image) for image in images[start:start + batch_size]],
                                          batch_size)

    @staticmethod
    def input_batches(inputs: Sequence[torch.Tensor], batch_size: int = 64) -> Iterator[tuple[torch.Tensor,
                                                                                            torch.Tensor]]:
        """Inputs already preprocessed (``preprocessing.transform()`` of each image) as (inputs, 0) batches."""
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            yield torch.stack(list(chunk)), torch.zeros(len(chunk), dtype=torch.long)

    def predict_images(self, images: Sequence[Image.Image]) -> tuple[list[str], np.ndarray]:
        """Classify upright RGB PIL images: (class names, probabilities)."""
        if self.classes is None:
            raise ValueError(f"{self.name}: predictions need class names")
        probs, _, _ = self.predict(self.image_batches(images), desc=f"{self.name} predict")
        return [self.classes[i] for i in probs.argmax(1)], probs

    def latency(self, runs: int = 10) -> Latency:
        """Batch-of-one forward passes on this model's device after a warm-up: median and spread (ms)."""
        return measure_latency(self.network, self.preprocessing.image_size, self.device, runs=runs)


def _recorded_weights(recorded: Mapping[str, Any] | None, spec: ModelSpec) -> WeightsRef | None:
    """The WeightsRef of weights recorded by selection or a card (``{"uri", "sha256"}``); None = the spec's."""
    if not recorded or not recorded.get("uri"):
        return None
    return WeightsRef(recorded["uri"], recorded.get("sha256"), key_map=spec.weights.key_map,
                      url=recorded.get("url"))
