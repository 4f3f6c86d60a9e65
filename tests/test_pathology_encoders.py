"""The pathology transformer encoders: CTransPath (Swin-T + ConvStem, 768-d) and UNI (ViT-L/16, 1024-d).

No real weights are available offline: the architectures are built with random weights and the loading is
tested on state dicts written in the official layouts (CTransPath: the timm 0.5.4 names of the authors'
``ctranspath.pth``, inside ``{"model": ...}``; UNI: timm's ViT names, as ``pytorch_model.bin``).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

pytest.importorskip("timm", reason="the transformer encoders (ctranspath, uni) need timm>=0.9")

from wsimil.features import extractors as ex  # noqa: E402
from wsimil.io import WsimilError  # noqa: E402

CTP_URL = "https://drive.google.com/file/d/1DoDx_70_TLj98gTf6YTXnu4tFhsFocDX/view?usp=sharing"
# the official CTransPath (timm 0.5.4 SwinTransformer with ConvStem, head = Identity): 27,520,038 parameters and
# 200 state-dict entries (183 of timm>=0.9's model + 12 relative_position_index + 5 attn_mask), counted on the
# timm_ctp 0.5.4 package that TRIDENT uses to run it
CTP_PARAMS = 27_520_038
CTP_OFFICIAL_KEYS = 200


def _tiles(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def ctp():
    return ex.build_extractor("ctranspath", pretrained=False)


@pytest.fixture(scope="module")
def uni():
    return ex.build_extractor("uni", pretrained=False)  # ViT-L: built once, ~3 s and 1.2 GB


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("WSIMIL_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torchhome"))
    return tmp_path


# -- CTransPath -----------------------------------------------------------------------------------------------


def to_official_ctranspath(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of ``ctranspath_state_dict``: our (timm>=0.9) names -> the official timm 0.5.4 names, with the
    buffers the old model saved (every block's relative_position_index, the shifted blocks' attn_mask)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
        out[f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}" if m else k] = v
    for name, buf in model.named_buffers():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ex.CTRANSPATH_BUFFERS and buf is not None:
            out[name] = buf.clone()
    return out


def _perturbed_ctranspath_sd(seed: int = 1) -> dict[str, torch.Tensor]:
    """A CTransPath state dict (our names) unlike the random init: every tensor moved, BN statistics set."""
    g = torch.Generator().manual_seed(seed)
    model = ex.ctranspath_model()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in sd.items():
        if v.is_floating_point():
            if k.endswith("running_var"):
                v.uniform_(0.5, 1.5, generator=g)
            else:
                v.add_(torch.randn(v.shape, generator=g) * 0.05)
    return sd


def test_registry_entries():
    assert {"ctranspath", "uni"} <= set(ex.list_extractors())
    c, u = ex.EXTRACTORS["ctranspath"], ex.EXTRACTORS["uni"]
    assert (c.dim, c.input_size, c.fixed_input_size, c.weight_files) == (768, 224, True, ("ctranspath.pth",))
    assert (u.dim, u.input_size, u.fixed_input_size) == (1024, 224, False)
    assert "pytorch_model.bin" in u.weight_files and u.sha256 is None  # no published digest found for UNI
    assert re.fullmatch(r"[0-9a-f]{64}", c.sha256) and c.url == CTP_URL


def test_ctranspath_shape_and_params(ctp):
    assert ctp.dim == 768 and ctp.input_size == 224 and ctp.weights_sha256 is None and not ctp.model.training
    assert ctp.mean == ex.IMAGENET_MEAN and ctp.std == ex.IMAGENET_STD
    out = ctp.embed(_tiles(2, 256))  # resized to 224 before the network
    assert out.shape == (2, 768) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(out, ex.build_extractor("ctranspath", pretrained=False).embed(_tiles(2, 256)))  # fixed init
    n = _n_params(ctp.model)
    assert n == CTP_PARAMS and abs(n - 27.5e6) / 27.5e6 < 0.005  # the paper's 27.5M
    # the stem of ctran.py: 3 -> 12 -> 24 (3x3 stride 2, BN, ReLU) -> 96 (1x1), then LayerNorm(96)
    stem = ctp.model.patch_embed
    assert isinstance(stem, ex.ConvStem)
    assert [tuple(stem.proj[i].weight.shape) for i in (0, 3, 6)] == [(12, 3, 3, 3), (24, 12, 3, 3), (96, 24, 1, 1)]


def test_ctranspath_input_size_is_fixed():
    with pytest.raises(WsimilError, match="224 px input only"):
        ex.build_extractor("ctranspath", pretrained=False, input_size=256)
    assert ex.build_extractor("ctranspath", pretrained=False, input_size=224).input_size == 224


def test_ctranspath_key_mapping_by_hand():
    t = torch.zeros(1)
    official = {
        "patch_embed.proj.0.weight": t,
        "patch_embed.proj.1.running_mean": t,
        "patch_embed.norm.weight": t,
        "layers.0.blocks.0.attn.relative_position_bias_table": t,
        "layers.0.blocks.0.attn.relative_position_index": t,
        "layers.0.blocks.1.attn_mask": t,
        "layers.0.downsample.reduction.weight": t,
        "layers.0.downsample.norm.weight": t,
        "layers.2.downsample.norm.bias": t,
        "layers.3.blocks.1.mlp.fc2.weight": t,
        "norm.weight": t,
    }
    assert set(ex.ctranspath_state_dict(official)) == {
        "patch_embed.proj.0.weight",
        "patch_embed.proj.1.running_mean",
        "patch_embed.norm.weight",
        "layers.0.blocks.0.attn.relative_position_bias_table",
        "layers.1.downsample.reduction.weight",
        "layers.1.downsample.norm.weight",
        "layers.3.downsample.norm.bias",
        "layers.3.blocks.1.mlp.fc2.weight",
        "norm.weight",
    }
    # a state dict in the modern layout (no layers.0.downsample) is not shifted again
    modern = {"layers.1.downsample.reduction.weight": t, "layers.0.blocks.0.attn.relative_position_index": t}
    assert set(ex.ctranspath_state_dict(modern)) == {"layers.1.downsample.reduction.weight"}


def test_ctranspath_loads_the_official_layout(ctp, tmp_path):
    sd = _perturbed_ctranspath_sd()
    reference = ex.ctranspath_model().eval()
    reference.load_state_dict(sd, strict=True)
    official = to_official_ctranspath(reference, sd)
    assert len(official) == CTP_OFFICIAL_KEYS
    for key in ("layers.0.blocks.0.attn.relative_position_bias_table", "patch_embed.proj.0.weight",
                "layers.0.downsample.reduction.weight", "layers.2.downsample.norm.weight",
                "layers.0.blocks.0.attn.relative_position_index", "layers.2.blocks.5.attn_mask"):
        assert key in official, key
    assert not any(k.startswith("layers.3.downsample") or k.startswith("head") for k in official)
    assert "layers.3.blocks.1.attn_mask" not in official  # 7x7 tokens in one window: the last stage never shifts
    f = tmp_path / "ctranspath.pth"
    torch.save({"model": official}, f)
    digest = ex.sha256_file(f)

    e = ex.build_extractor("ctranspath", weights=f, weights_sha256=digest)
    assert e.weights_path == str(f) and e.weights_sha256 == digest
    assert torch.equal(e.model.layers[1].downsample.reduction.weight, official["layers.0.downsample.reduction.weight"])
    tiles = _tiles(2, 224, seed=5)
    with torch.inference_mode():
        want = reference(e.preprocess(tiles).contiguous()).float()
    got = e.embed(tiles)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, ctp.embed(tiles))  # the weights were used, not the random init

    # the same file found as $WSIMIL_WEIGHTS_DIR/ctranspath.pth; the published digest is checked by default
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WSIMIL_WEIGHTS_DIR", str(tmp_path))
        with pytest.raises(WsimilError) as err:
            ex.build_extractor("ctranspath")
        msg = str(err.value)
        assert str(f) in msg and digest in msg and ex.EXTRACTORS["ctranspath"].sha256 in msg
        e2 = ex.build_extractor("ctranspath", weights_sha256=digest.upper())
        assert e2.weights_path == str(f) and torch.equal(e2.embed(tiles), got)


def test_ctranspath_wrong_sha256(tmp_path):
    f = tmp_path / "ctranspath.pth"
    torch.save({"model": to_official_ctranspath(ex.ctranspath_model(), _perturbed_ctranspath_sd())}, f)
    wrong = "0" * 64
    with pytest.raises(WsimilError) as err:
        ex.build_extractor("ctranspath", weights=f, weights_sha256=wrong)
    msg = str(err.value)
    assert str(f) in msg and wrong in msg and ex.sha256_file(f) in msg
    with pytest.raises(WsimilError, match="64 hex digits"):
        ex.build_extractor("ctranspath", weights=f, weights_sha256="abc")


def test_ctranspath_strict_keys(tmp_path):
    model = ex.ctranspath_model()
    base = to_official_ctranspath(model, _perturbed_ctranspath_sd())

    def build_with(sd):
        f = tmp_path / "ctp.pth"
        torch.save({"model": sd}, f)
        return ex.build_extractor("ctranspath", weights=f, weights_sha256=ex.sha256_file(f))

    with pytest.raises(WsimilError, match=r"unexpected \['layers.0.blocks.0.attn.extra_scale'\]"):
        build_with({**base, "layers.0.blocks.0.attn.extra_scale": torch.ones(3)})
    with pytest.raises(WsimilError, match=r"unexpected \['head.weight', 'head.bias'\]"):  # a classifier is no trunk
        build_with({**base, "head.weight": torch.zeros(2, 768), "head.bias": torch.zeros(2)})
    missing = dict(base)
    del missing["layers.2.blocks.3.mlp.fc1.weight"]
    with pytest.raises(WsimilError, match=r"missing \['layers.2.blocks.3.mlp.fc1.weight'\]"):
        build_with(missing)
    shape = {**base, "norm.weight": torch.ones(96)}
    with pytest.raises(WsimilError, match="(?s)does not fit extractor 'ctranspath'.*size mismatch for norm.weight"):
        build_with(shape)


def test_ctranspath_missing_file_names_paths_and_url(no_weights):
    with pytest.raises(WsimilError) as err:
        ex.build_extractor("ctranspath")
    msg = str(err.value)
    assert str(no_weights / "weights" / "ctranspath.pth") in msg
    assert str(no_weights / "torchhome" / "hub" / "checkpoints" / "ctranspath.pth") in msg
    assert CTP_URL in msg and "github.com/Xiyue-Wang/TransPath" in msg
    with pytest.raises(WsimilError, match=f"not found.*{re.escape(CTP_URL)}"):
        ex.build_extractor("ctranspath", weights=no_weights / "nope.pth")


# -- UNI ------------------------------------------------------------------------------------------------------


def _vit_params(dim: int, depth: int, patch: int, img: int, mlp_ratio: int = 4) -> int:
    """Parameters of a timm ViT with class token, LayerScale and no head, from its dimensions."""
    tokens = (img // patch) ** 2 + 1
    embed = 3 * patch * patch * dim + dim + dim + tokens * dim  # patchify conv, class token, position embedding
    hidden = mlp_ratio * dim
    block = (2 * dim  # norm1
             + dim * 3 * dim + 3 * dim + dim * dim + dim  # qkv, proj
             + dim  # ls1
             + 2 * dim  # norm2
             + dim * hidden + hidden + hidden * dim + dim  # fc1, fc2
             + dim)  # ls2
    return embed + depth * block + 2 * dim  # final norm


def test_uni_shape_and_params(uni):
    assert uni.dim == 1024 and uni.input_size == 224 and uni.weights_sha256 is None and not uni.model.training
    assert uni.mean == ex.IMAGENET_MEAN and uni.std == ex.IMAGENET_STD
    out = uni.embed(_tiles(2, 256))
    assert out.shape == (2, 1024) and out.dtype == torch.float32 and torch.isfinite(out).all()
    n = _n_params(uni.model)
    assert n == _vit_params(1024, 24, 16, 224) == 303_350_784
    assert abs(n - 303.3e6) / 303.3e6 < 0.001  # ViT-L/16 without a classifier: 303.3M
    # the model card's arguments: LayerScale init 1e-5, 16 px patches, dynamic image size, no classifier
    assert uni.model.blocks[0].ls1.gamma.shape == (1024,) and uni.model.patch_embed.proj.kernel_size == (16, 16)
    assert uni.model.dynamic_img_size and uni.model.num_classes == 0 and len(uni.model.blocks) == 24


def test_uni_loads_pytorch_model_bin(uni, tmp_path, no_weights):
    g = torch.Generator().manual_seed(2)
    sd = {k: v + torch.randn(v.shape, generator=g) * 0.02 if v.is_floating_point() else v.clone()
          for k, v in uni.model.state_dict().items()}
    wdir = no_weights / "weights" / "uni"
    wdir.mkdir(parents=True)
    f = wdir / "pytorch_model.bin"
    torch.save(sd, f)  # the official file is a bare state dict with timm's names
    del sd
    tiles = _tiles(2, 224, seed=7)

    e = ex.build_extractor("uni")  # found as $WSIMIL_WEIGHTS_DIR/uni/pytorch_model.bin; no digest to check
    assert e.weights_path == str(f) and e.weights_sha256 == ex.sha256_file(f)
    got = e.embed(tiles)
    assert got.shape == (2, 1024) and not torch.allclose(got, uni.embed(tiles))
    file_sd = torch.load(f, map_location="cpu", weights_only=True)
    assert torch.equal(e.model.blocks[23].ls2.gamma, file_sd["blocks.23.ls2.gamma"])
    assert torch.equal(e.model.pos_embed, file_sd["pos_embed"])
    del e, file_sd

    wrong = "f" * 64
    with pytest.raises(WsimilError) as err:
        ex.build_extractor("uni", weights=f, weights_sha256=wrong)
    assert str(f) in str(err.value) and wrong in str(err.value) and ex.sha256_file(f) in str(err.value)


def test_uni_missing_file_names_paths_and_gate(no_weights):
    with pytest.raises(WsimilError) as err:
        ex.build_extractor("uni")
    msg = str(err.value)
    for name in ex.EXTRACTORS["uni"].weight_files:
        assert str(no_weights / "weights" / name) in msg
        assert str(no_weights / "torchhome" / "hub" / "checkpoints" / name) in msg
    assert "https://huggingface.co/MahmoodLab/UNI" in msg and "gated" in msg


def test_pretrained_false_excludes_a_digest():
    with pytest.raises(ValueError, match="exclude"):
        ex.build_extractor("ctranspath", pretrained=False, weights_sha256="0" * 64)


def test_ctranspath_matches_the_official_timm_0_5_4():
    """Against the authors' own model: ``ctran.py`` on timm 0.5.4 (the ``timm_ctp`` package TRIDENT installs
    for it). Optional: ``pip install timm_ctp`` (import name ``timm_ctp``, no clash with timm) to run it."""
    timm_ctp = pytest.importorskip("timm_ctp", reason="the official timm 0.5.4 (pip install timm_ctp) is optional")
    from torch import nn

    class OfficialStem(nn.Module):  # ctran.py's ConvStem as timm 0.5.4 calls it: (B, L, C) tokens out
        def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=768, norm_layer=None, flatten=True):
            super().__init__()
            size = img_size[0] if isinstance(img_size, (tuple, list)) else img_size
            self.img_size, self.patch_size = (size, size), (4, 4)
            self.grid_size = (size // 4, size // 4)
            self.num_patches = self.grid_size[0] * self.grid_size[1]
            layers, cin, cout = [], 3, embed_dim // 8
            for _ in range(2):
                layers += [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin, cout = cout, cout * 2
            self.proj = nn.Sequential(*layers, nn.Conv2d(cin, embed_dim, 1))
            self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

        def forward(self, x):
            return self.norm(self.proj(x).flatten(2).transpose(1, 2))

    official = timm_ctp.create_model("swin_tiny_patch4_window7_224", embed_layer=OfficialStem, pretrained=False)
    official.head = nn.Identity()
    ours = ex.ctranspath_model().eval()
    sd = _perturbed_ctranspath_sd(seed=3)
    ours.load_state_dict(sd, strict=True)
    off_sd = to_official_ctranspath(ours, sd)
    assert set(off_sd) == set(official.state_dict()) and len(off_sd) == CTP_OFFICIAL_KEYS
    assert _n_params(official) == CTP_PARAMS
    official.load_state_dict(off_sd, strict=True)  # as get_features_CTransPath.py loads ctranspath.pth
    official.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), official(x), rtol=1e-4, atol=1e-5)
