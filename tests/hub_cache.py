"""Hugging Face cache entries built from the real public configs in `tests/fixtures/hub/`, random weights.

`build_cache(hub_dir, names)` writes, for each registry model, what `hf download <repo>` leaves in
`$HF_HOME/hub`: `models--org--name/refs/main` (a commit hash), `blobs/<sha256>` (file contents)
and `snapshots/<commit>/<path>` (relative symlinks to the blobs), no other marker files. Each
component is built from its real config with random weights and saved as the conversion scripts
save it: the transformer and the UMT5 encoder sharded with an index (the real ones exceed 5 GB at
fp32), the rest single safetensors files. Widths are divided (`scale`), depths cut to 2 where a
stack repeats; every structural choice (block types, patch sizes, VAE strides, norms, attention
layout, fps conditioning) is the real one. With `full=True` nothing is scaled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures" / "hub"
WORDS = "a red ball cat dog moving right left the on blue green sky over".split()
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fixture_dir(model_id: str) -> Path:
    """The folder holding the public configs of `model_id`."""
    return FIXTURES / model_id.replace("/", "--")


def _load(model_id: str, rel: str) -> dict:
    return json.loads((fixture_dir(model_id) / rel).read_text())


# -- scaling the real configs --------------------------------------------------------------------


def scale_unet(cfg: dict, k: int) -> dict:
    """UNet3D: channels, heads and text width / k, groups / 8 (the head width stays the real 5 channels)."""
    if k == 1:
        return cfg
    return {
        **cfg,
        "block_out_channels": [c // k for c in cfg["block_out_channels"]],
        "norm_num_groups": cfg["norm_num_groups"] // 8,
        "attention_head_dim": cfg["attention_head_dim"] // k,
        "cross_attention_dim": cfg["cross_attention_dim"] // k,
    }


def scale_sd_vae(cfg: dict, k: int) -> dict:
    """Image VAE: channels / 16, groups / 8; four levels, two layers each, as the real one."""
    if k == 1:
        return cfg
    return {**cfg, "block_out_channels": [c // 16 for c in cfg["block_out_channels"]], "norm_num_groups": cfg["norm_num_groups"] // 8}


def scale_clip(cfg: dict, k: int, vocab: int) -> dict:
    """CLIP text encoder: width / k, 2 layers, the tokenizer's vocabulary."""
    if k == 1:
        return cfg
    return {
        **cfg,
        "hidden_size": cfg["hidden_size"] // k,
        "intermediate_size": cfg["intermediate_size"] // k,
        "projection_dim": cfg["projection_dim"] // k,
        "num_hidden_layers": 2,
        "vocab_size": vocab,
    }


def scale_transformer(cfg: dict, k: int) -> dict:
    """Wan / SkyReels transformer: head width / k (rotary split kept valid), text width / 64, 2 layers."""
    if k == 1:
        return cfg
    return {
        **cfg,
        "attention_head_dim": cfg["attention_head_dim"] // k,
        "ffn_dim": cfg["ffn_dim"] // k,
        "freq_dim": cfg["freq_dim"] // k,
        "text_dim": cfg["text_dim"] // 64,
        "num_layers": 2,
    }


def scale_wan_vae(cfg: dict, k: int) -> dict:
    """Wan VAE: base width 96 -> 12 at k = 8; levels, strides, residual blocks and latent stats real."""
    return cfg if k == 1 else {**cfg, "base_dim": cfg["base_dim"] // k}


def scale_umt5(cfg: dict, k: int, vocab: int) -> dict:
    """UMT5 encoder: width / 64, 2 layers, the tokenizer's vocabulary; gated-GELU and buckets real."""
    if k == 1:
        return cfg
    return {
        **cfg,
        "d_model": cfg["d_model"] // 64,
        "d_ff": cfg["d_ff"] // 64,
        "d_kv": cfg["d_kv"] // 8,
        "num_heads": cfg["num_heads"] // 8,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "vocab_size": vocab,
    }


# -- tokenizers (tiny vocabularies in the real file formats) -------------------------------------


def write_clip_tokenizer(out: Path, model_id: str) -> int:
    """vocab.json + merges.txt and the real tokenizer_config / special_tokens_map; returns the vocabulary size."""
    vocab = {"!": 0}
    for w in WORDS:
        vocab[w + "</w>"] = len(vocab)
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(fixture_dir(model_id) / "tokenizer" / name, out / name)
    return len(vocab)


def write_t5_tokenizer(out: Path, model_id: str) -> int:
    """A Unigram tokenizer.json (the real format) and the real tokenizer_config / special_tokens_map."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in WORDS]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"] + [("\u2581", -3.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(fixture_dir(model_id) / "tokenizer" / name, out / name)
    return len(pieces)


# -- building one repository -----------------------------------------------------------------------


def _jitter(model: torch.nn.Module, seed: int, scale: float = 0.02) -> torch.nn.Module:
    """Random weights everywhere (zero-initialised output layers included), reproducibly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def _save_sharded(model, out: Path, shards: int) -> None:
    """save_pretrained with a shard size that gives `shards` (1 or 2) files (as max_shard_size="5GB" does at full width)."""
    size = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    model.save_pretrained(out, max_shard_size=int(size * 0.6) if shards == 2 else "100GB")


def build_repo(model_id: str, out: Path, k: int = 8) -> None:
    """Write one repository's files (random weights) under `out`, as the Hub holds them."""
    from diffusers import AutoencoderKL, AutoencoderKLWan, SkyReelsV2Transformer3DModel, UNet3DConditionModel, WanTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel, UMT5Config, UMT5EncoderModel

    from fifo.backbones.unet3d import VideoCrafter2UNet

    index = _load(model_id, "model_index.json")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(fixture_dir(model_id) / "model_index.json", out / "model_index.json")
    (out / "scheduler").mkdir()
    shutil.copy(fixture_dir(model_id) / "scheduler" / "scheduler_config.json", out / "scheduler" / "scheduler_config.json")
    torch.manual_seed(0)
    if "unet" in index:
        ku = 2 * k if k > 1 else 1  # the UNet is the largest part: twice the cut
        cfg = scale_unet(_load(model_id, "unet/config.json"), ku)
        cls = VideoCrafter2UNet if cfg.get("fps_cond") else UNet3DConditionModel
        _save_sharded(_jitter(cls.from_config(cfg), 1), out / "unet", 1)
        vae = AutoencoderKL.from_config(scale_sd_vae(_load(model_id, "vae/config.json"), k))
        _jitter(vae, 2).save_pretrained(out / "vae")
        vocab = write_clip_tokenizer(out / "tokenizer", model_id)
        te_cfg = scale_clip(_load(model_id, "text_encoder/config.json"), ku, vocab)
        CLIPTextModel(CLIPTextConfig(**te_cfg)).save_pretrained(out / "text_encoder")
    else:
        cfg = scale_transformer(_load(model_id, "transformer/config.json"), k)
        cls = SkyReelsV2Transformer3DModel if "SkyReels" in cfg["_class_name"] else WanTransformer3DModel
        _save_sharded(_jitter(cls.from_config(cfg), 1), out / "transformer", 2)
        vae = AutoencoderKLWan.from_config(scale_wan_vae(_load(model_id, "vae/config.json"), k))
        _jitter(vae, 2, 0.01).save_pretrained(out / "vae")
        vocab = write_t5_tokenizer(out / "tokenizer", model_id)
        te_cfg = scale_umt5(_load(model_id, "text_encoder/config.json"), k, vocab)
        _save_sharded(UMT5EncoderModel(UMT5Config(**te_cfg)), out / "text_encoder", 2)


def to_hub_cache(model_id: str, files: Path, hub_dir: Path) -> Path:
    """Move the files of one repository into `hub_dir` in the layout `hf download` leaves."""
    repo = hub_dir / ("models--" + model_id.replace("/", "--"))
    snap = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for path in sorted(p for p in files.rglob("*") if p.is_file()):
        rel = path.relative_to(files)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        if not blob.exists():
            shutil.move(str(path), blob)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


def build_cache(hub_dir: Path, model_ids: list[str], full: bool = False) -> dict[str, Path]:
    """A Hub cache holding every repository in `model_ids`; returns each one's snapshot folder."""
    snaps = {}
    for model_id in model_ids:
        with tempfile.TemporaryDirectory() as tmp:
            build_repo(model_id, Path(tmp) / "repo", k=1 if full else 8)
            snaps[model_id] = to_hub_cache(model_id, Path(tmp) / "repo", hub_dir)
    return snaps


# -- in memory, for benchmarks -------------------------------------------------------------------


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`dtype`, except the modules the class keeps in float32 (as `from_pretrained(torch_dtype=)` does)."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    model.to(dtype)
    if dtype != torch.float32:
        for name, module in model.named_modules():
            if any(k in name.split(".") for k in keep):
                module.float()
    return model.eval().requires_grad_(False)


def build_backbone(name: str, k: int = 1, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """Registry model `name` built from its fixture configs with random weights, straight on `device`.

    No files: every component is initialised where it will run (a 5.7 GB transformer in seconds on
    a GPU). The tokenizer is the tiny one (prompts are encoded once; their length is the real one,
    `max_sequence_length` / 77 tokens). `k` divides the widths as in `build_repo` (1: full width).
    """
    import fifo
    from diffusers import AutoencoderKL, AutoencoderKLWan, SkyReelsV2Transformer3DModel, UNet3DConditionModel, WanTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    from fifo.backbones.hub import load_scheduler
    from fifo.backbones.unet3d import UNet3DBackbone, VideoCrafter2UNet
    from fifo.backbones.wan import SkyReelsDFBackbone, WanBackbone

    spec = fifo.BACKBONES[name]
    model_id = spec.model_id
    index = _load(model_id, "model_index.json")
    scheduler = load_scheduler(str(fixture_dir(model_id)))
    opts = {"name": name, "defaults": spec.defaults, "device": device}
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp, torch.device(device):
        if "unet" in index:
            ku = 2 * k if k > 1 else 1
            cfg = scale_unet(_load(model_id, "unet/config.json"), ku)
            unet = (VideoCrafter2UNet if cfg.get("fps_cond") else UNet3DConditionModel).from_config(cfg)
            vae = AutoencoderKL.from_config(scale_sd_vae(_load(model_id, "vae/config.json"), k))
            vocab = write_clip_tokenizer(Path(tmp) / "tok", model_id)
            tok = CLIPTokenizer.from_pretrained(Path(tmp) / "tok")
            te = CLIPTextModel(CLIPTextConfig(**scale_clip(_load(model_id, "text_encoder/config.json"), ku, vocab)))
            parts = [_cast(m, dtype) for m in (unet, vae, te)]
            return UNet3DBackbone(parts[0], parts[1], parts[2], tok, scheduler, fps_condition=spec.fps_condition, **opts)
        cfg = scale_transformer(_load(model_id, "transformer/config.json"), k)
        skyreels = "SkyReels" in cfg["_class_name"]
        tf = (SkyReelsV2Transformer3DModel if skyreels else WanTransformer3DModel).from_config(cfg)
        vae = AutoencoderKLWan.from_config(scale_wan_vae(_load(model_id, "vae/config.json"), k))
        vocab = write_t5_tokenizer(Path(tmp) / "tok", model_id)
        tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(tmp) / "tok" / "tokenizer.json"), pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
        te = UMT5EncoderModel(UMT5Config(**scale_umt5(_load(model_id, "text_encoder/config.json"), k, vocab)))
        tf, te = (_cast(m, dtype) for m in (tf, te))
        vae = vae.float().eval().requires_grad_(False)  # fp32, as the adapter loads it
        extra = {"fps_condition": spec.fps_condition} if skyreels else {}
        cls = SkyReelsDFBackbone if skyreels else WanBackbone
        if spec.distilled is not None:
            extra["distilled"] = spec.distilled
        return cls(tf, vae, te, tok, scheduler, flow_shift=spec.flow_shift, **extra, **opts)
