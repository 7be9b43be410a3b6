"""The model zoo: specs of pretrained backbones, verified weights, and model construction.

    get_spec(name) -> ModelSpec      list_models() -> [names]      create_model(name, num_classes)
"""

from pipeline.zoo.factory import create_model
from pipeline.zoo.registry import get_spec, list_models, register
from pipeline.zoo.specs import ModelSpec, WeightsRef
from pipeline.zoo.weights import WeightsRejected, WeightsUnavailable

__all__ = ["get_spec", "list_models", "register", "create_model", "ModelSpec", "WeightsRef",
           "WeightsUnavailable", "WeightsRejected"]
