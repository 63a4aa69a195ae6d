"""Wan family: Wan2.1 T2V and SkyReels-V2 diffusion forcing (diffusers transformers, flow matching).

Per-frame timesteps are native here: `WanTransformer3DModel` takes a `(B, seq)` timestep, one per
token (the path Wan2.2 TI2V uses), so each frame's tokens get its frame's timestep; the
diffusion-forcing `SkyReelsV2Transformer3DModel` takes `(B, F)` with `enable_diffusion_forcing=True`
(it was trained with a noise level per frame).

Both ship a multistep UniPC scheduler; FIFO steps each frame alone, so the noise schedule is the
single-step equivalent, flow matching with the same shift (Euler in the engine).

Their VAE (`AutoencoderKLWan`) is causal with 4x temporal compression: `WanStreamDecoder` decodes
popped latents one at a time with the VAE's feature cache (the first latent gives 1 frame, every
later one 4), exactly the loop of `AutoencoderKLWan._decode`, and can save and restore the cache.
"""

from __future__ import annotations

import html
import re
from typing import Any

import numpy as np
import torch

from .base import BackboneDefaults, Decoder, Distilled
from .diffusers_common import DiffusersBackbone, to_uint8
from .hub import apply_cpu_offload, default_device, hub_call, load_scheduler, load_tokenizer, probe_repo


def prompt_clean(text: str) -> str:
    """The text clean-up Wan's pipelines apply before tokenising (ftfy, HTML entities, whitespace)."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # ftfy only repairs mojibake; prompts typed in the app rarely have any
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class WanStreamDecoder(Decoder):
    """Causal streaming decoder for `AutoencoderKLWan`: latent by latent, carrying the conv feature cache.

    The cache is this decoder's own list (not the VAE's `_feat_map`), so several videos can decode
    with one VAE; `state_dict()` hands it out on CPU and `load_state_dict` puts it back.
    """

    def __init__(self, vae: torch.nn.Module, device: torch.device) -> None:
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        self.vae = vae
        self.device = device
        self._num_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        self._cache: list | None = None  # None until the first latent: that one is decoded as a first chunk
        c = int(vae.config.z_dim)
        self._mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, c, 1, 1, 1)
        self._std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, c, 1, 1, 1)

    @torch.no_grad()
    def decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (C, F, h, w), the next F of the video -> frames (N, 3, H, W) in [-1, 1]."""
        vae = self.vae
        z = latents[None].float().to(self.device) * self._std.to(self.device) + self._mean.to(self.device)
        x = vae.post_quant_conv(z.to(vae.dtype))  # a 1x1x1 conv: per frame, no cache needed
        outs = []
        for i in range(x.shape[2]):
            first = self._cache is None
            if first:
                self._cache = [None] * self._num_convs
            outs.append(vae.decoder(x[:, :, i : i + 1], feat_cache=self._cache, feat_idx=[0], first_chunk=first))
        out = torch.cat(outs, dim=2)
        if vae.config.patch_size is not None:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            out = unpatchify(out, patch_size=vae.config.patch_size)
        return out.clamp(-1, 1)[0].permute(1, 0, 2, 3)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents (C, F, h, w) -> uint8 frames (N, H, W, 3): N = 1 + 4 (F - 1) for the first call, else 4 F."""
        return to_uint8(self.decode_float(latents))

    def state_dict(self) -> dict[str, Any]:
        """The feature cache on CPU (tensors, the marker string "Rep", or None per causal conv)."""
        if self._cache is None:
            return {"cache": None}
        return {"cache": [c.detach().to("cpu", copy=True) if torch.is_tensor(c) else c for c in self._cache]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a cache from `state_dict`, onto this decoder's device."""
        cache = state.get("cache")
        if cache is not None and len(cache) != self._num_convs:
            raise ValueError(f"decoder state has {len(cache)} cache entries, this VAE needs {self._num_convs}")
        self._cache = None if cache is None else [c.to(self.device, self.vae.dtype) if torch.is_tensor(c) else c for c in cache]


_FALLBACK = BackboneDefaults(21, 2, True, 0.0, 5.0, 16, 480, 832)


class WanBackbone(DiffusersBackbone):
    """Wan2.1 text-to-video: flow matching, UMT5 text encoder, per-token timesteps, causal VAE."""

    prediction_type = "flow"

    def __init__(
        self,
        transformer: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoder: torch.nn.Module,
        tokenizer: Any,
        scheduler: Any,
        name: str = "wan",
        defaults: BackboneDefaults | None = None,
        max_sequence_length: int = 512,
        flow_shift: float | None = None,
        device: str | torch.device | None = None,
        distilled: Distilled | None = None,
    ) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        from ..schedule import NoiseSchedule

        self.transformer, self.vae, self.text_encoder = transformer, vae, text_encoder
        self.tokenizer, self.scheduler = tokenizer, scheduler
        self.name = name
        self.defaults = defaults or _FALLBACK
        self.distilled = distilled  # a step-distilled checkpoint: sampled at its own timesteps (see base.Distilled)
        self.native_frames = self.defaults.frames_per_window
        self.device = torch.device(device) if device is not None else transformer.device
        self.dtype = transformer.dtype
        self.max_sequence_length = max_sequence_length
        self.latent_channels = int(transformer.config.in_channels)
        if int(vae.config.z_dim) != self.latent_channels:
            raise ValueError(f"vae z_dim={vae.config.z_dim} but transformer in_channels={self.latent_channels}")
        if vae.config.patch_size is not None:
            raise ValueError("VAEs with patch_size (Wan2.2) are not supported")
        self.spatial_compression = 2 ** len(vae.temperal_downsample)
        self.temporal_compression = 2 ** sum(vae.temperal_downsample)
        p_t, self._p_h, self._p_w = transformer.config.patch_size
        if p_t != 1:
            raise ValueError(f"temporal patch size {p_t}: per-frame timesteps need 1")
        cfg = scheduler.config
        pred = cfg.get("prediction_type", "flow_prediction")
        if "flow" not in str(pred) and not cfg.get("use_flow_sigmas", False) and "FlowMatch" not in type(scheduler).__name__:
            raise ValueError(f"{name}: scheduler {type(scheduler).__name__} with prediction_type={pred!r} is not flow matching")
        if flow_shift is None:  # the shipped config's (SkyReels-V2 DF ships none: 1.0; the registry sets 8)
            flow_shift = cfg.get("flow_shift", cfg.get("shift", 1.0))
        if isinstance(flow_shift, bool) or not isinstance(flow_shift, (int, float)) or not float(flow_shift) > 0:
            raise ValueError(f"flow_shift={flow_shift!r}: must be a number > 0")
        self.flow_shift = float(flow_shift)
        # UniPC keeps a history per sample; Euler with the same shift is its single-step equivalent.
        steps = int(cfg.get("num_train_timesteps", 1000))
        euler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=steps, shift=self.flow_shift)
        self.noise_schedule = NoiseSchedule.from_scheduler(euler)

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def _transformer_class(cls) -> type:
        from diffusers import WanTransformer3DModel

        return WanTransformer3DModel

    @classmethod
    def from_pretrained(
        cls,
        model_id: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        name: str | None = None,
        defaults: BackboneDefaults | None = None,
        max_sequence_length: int = 512,
        flow_shift: float | None = None,
        enable_vae_slicing: bool = False,
        enable_vae_tiling: bool = False,
        cpu_offload: bool = False,
        **kwargs,
    ) -> "WanBackbone":
        """Load from the Hub (cached after the first download): bf16 on CUDA (the VAE in fp32), fp32 on CPU.

        `flow_shift` replaces the shipped scheduler's shift (None: keep it). `enable_vae_tiling` is
        accepted for a uniform API but the streaming decoder decodes whole frames (one latent at a
        time already bounds its memory in time).
        """
        from diffusers import AutoencoderKLWan
        from transformers import UMT5EncoderModel

        device = default_device(device)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        name = name or model_id

        probe_repo(model_id, ["model_index.json"])
        tcls = cls._transformer_class()
        load = tcls.from_pretrained
        transformer = hub_call(model_id, "transformer", load, model_id, subfolder="transformer", torch_dtype=dtype)
        scheduler = load_scheduler(model_id)
        tokenizer = load_tokenizer(model_id)
        load = UMT5EncoderModel.from_pretrained
        text_encoder = hub_call(model_id, "text encoder", load, model_id, subfolder="text_encoder", dtype=dtype)
        # fp32 as in diffusers' Wan examples: the VAE is small, and decoding is not where the time goes.
        vae = hub_call(model_id, "VAE", AutoencoderKLWan.from_pretrained, model_id, subfolder="vae", torch_dtype=torch.float32)
        for m in (transformer, text_encoder, vae):
            m.eval().requires_grad_(False)
        if enable_vae_slicing:
            vae.enable_slicing()
        vae.to(device)  # small, and the streaming decoder calls its parts outside any offload hook
        if cpu_offload:
            apply_cpu_offload([text_encoder, transformer], device)  # UMT5-XXL alone is about 11 GB in bf16
        else:
            transformer.to(device), text_encoder.to(device)
        return cls(
            transformer, vae, text_encoder, tokenizer, scheduler, name=name, defaults=defaults,
            max_sequence_length=max_sequence_length, flow_shift=flow_shift, device=device, **kwargs,
        )  # fmt: skip

    # -- the contract --------------------------------------------------------------------------

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent (h, w); the transformer's 2x2 patches need pixel sizes that are multiples of 16."""
        s = self.spatial_compression
        if height <= 0 or width <= 0 or height % (s * self._p_h) or width % (s * self._p_w):
            raise ValueError(
                f"height={height}, width={width}: must be positive multiples of {s * self._p_h} x {s * self._p_w} for {self.name}"
            )
        return height // s, width // s

    @torch.no_grad()
    def _encode_text(self, text: str) -> torch.Tensor:
        n = self.max_sequence_length
        tok = self.tokenizer(
            [prompt_clean(text)], padding="max_length", max_length=n, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )  # fmt: skip
        mask = tok.attention_mask
        emb = self.text_encoder(tok.input_ids.to(self.device), mask.to(self.device)).last_hidden_state
        emb = emb.to(self.device, self.dtype)
        # Wan was trained with the padding positions zeroed, not with the encoder's output there.
        keep = (torch.arange(n, device=emb.device) < int(mask.gt(0).sum()))[None, :, None]
        return emb * keep

    def _model(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        # Tokens come out of the patch embedding in (frame, row, column) order.
        per_frame = (x.shape[3] // self._p_h) * (x.shape[4] // self._p_w)
        tokens = t.repeat_interleave(per_frame, dim=1)  # (B, F * rows * cols)
        return self.transformer(hidden_states=x, timestep=tokens, encoder_hidden_states=ctx, return_dict=False)[0]

    def _check_latents(self, latents: torch.Tensor) -> None:
        h, w = latents.shape[-2:]
        if h % self._p_h or w % self._p_w:
            raise ValueError(f"latent size {h}x{w}: must be a multiple of the patch size {self._p_h}x{self._p_w}")

    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames (1 + 4k, H, W, 3) -> normalised latents (C, 1 + k, h, w), causally through the VAE's encoder."""
        from .encoders import check_frames, encode_causal_vae

        return encode_causal_vae(self.vae, check_frames(self, frames), self.device, self.temporal_compression)

    def decoder(self) -> WanStreamDecoder:
        """A fresh causal streaming decoder (its cache starts at the first latent it is given)."""
        return WanStreamDecoder(self.vae, self.device)


class SkyReelsDFBackbone(WanBackbone):
    """SkyReels-V2 diffusion forcing: a Wan-style transformer trained with a noise level per frame."""

    def __init__(self, *args, fps_condition: int = 24, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fps_condition = fps_condition

    @classmethod
    def _transformer_class(cls) -> type:
        from diffusers import SkyReelsV2Transformer3DModel

        return SkyReelsV2Transformer3DModel

    def _model(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        kw = {}
        if self.transformer.config.inject_sample_info:
            # The DF pipeline's two frame-rate classes (16 -> 0, else 1). One entry, not B: diffusers
            # repeats it over the frames, which broadcasts over the batch only from a batch of one.
            kw["fps"] = [0 if self.fps_condition == 16 else 1]
        return self.transformer(
            hidden_states=x, timestep=t, encoder_hidden_states=ctx, enable_diffusion_forcing=True, return_dict=False, **kw
        )[0]
