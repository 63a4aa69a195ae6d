"""UNet3D family: ModelScope T2V, zeroscope v2, VideoCrafter2 (diffusers `UNet3DConditionModel`).

`UNet3DConditionModel.forward` computes ONE time embedding per batch row and repeats it over the
frames before handing it to every ResNet block as `temb`, shape (B*F, C). FIFO-Diffusion needs a
timestep per frame, so `per_frame_unet3d` computes the (B*F, C) embedding from the model's own
`time_proj` / `time_embedding` modules and substitutes it with forward pre-hooks on the ResNet
blocks, for the duration of one call, under a per-model lock. diffusers' forward is not copied.

VideoCrafter2's diffusers port (`adamdad/videocrafterv2_diffusers`) is a UNet3D whose time
embedding also gets `fps_embedding(fps_proj(fps))` added; `VideoCrafter2UNet` adds those modules
and every UNet of this family is loaded with strict key matching.

Hub loading lives in `hub.py`, what both diffusers families do alike (prompts, CFG, dtypes) in
`diffusers_common.py`.
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from typing import Any

import numpy as np
import torch
from diffusers import UNet3DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps

from .base import BackboneDefaults, Decoder
from .diffusers_common import DiffusersBackbone, PromptEmbeds, to_uint8
from .hub import (
    CheckpointMismatchError,
    ModelLoadError,
    WeightsUnavailableError,
    apply_cpu_offload,
    check_tokenizer,
    default_device,
    hub_call,
    load_model_strict,
    load_scheduler,
    probe_repo,
    with_variant,
)

__all__ = [
    "CheckpointMismatchError",
    "FrameVAEDecoder",
    "ModelLoadError",
    "PromptEmbeds",
    "UNet3DBackbone",
    "VideoCrafter2UNet",
    "WeightsUnavailableError",
    "model_lock",
    "per_frame_unet3d",
]

# -- per-frame time embedding ----------------------------------------------------------------------

_LOCKS: "weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """One re-entrant lock per model object, shared by every backbone wrapping it."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def _temb_consumers(unet: torch.nn.Module) -> list[torch.nn.Module]:
    from diffusers.models.resnet import ResnetBlock2D

    return [m for m in unet.modules() if isinstance(m, ResnetBlock2D) and m.time_emb_proj is not None]


def frame_time_embedding(unet: torch.nn.Module, timesteps: torch.Tensor) -> torch.Tensor:
    """The model's own time embedding for each of N timesteps (N,) -> (N, C), as its forward builds it."""
    t_emb = unet.time_proj(timesteps).to(dtype=unet.dtype)  # time_proj returns float32, like forward casts
    return unet.time_embedding(t_emb, None)


def per_frame_unet3d(
    unet: torch.nn.Module, sample: torch.Tensor, timesteps: torch.Tensor, encoder_hidden_states: torch.Tensor, **forward_kwargs
) -> torch.Tensor:
    """`unet(sample (B,C,F,h,w), ...)` with frame j of row b at its own timestep `timesteps[b, j]`.

    Every ResNet block receives the per-frame embedding instead of the repeated one; the hooks exist
    only during this call (removed even on exception) and calls on one model are serialised.
    """
    b, _, f = sample.shape[:3]
    if timesteps.shape != (b, f):
        raise ValueError(f"timesteps shape {tuple(timesteps.shape)}: expected (B, F) = {(b, f)}")
    if getattr(unet.config, "time_cond_proj_dim", None) is not None:
        raise ValueError("UNets with time_cond_proj_dim (timestep_cond) are not supported")
    flat = timesteps.reshape(-1)  # (B*F,), row-major: the order of forward's (B*F, ...) frames
    state: dict[str, Any] = {"emb": None, "calls": 0}
    owner = threading.get_ident()

    def substitute(module, args, kwargs):
        if threading.get_ident() != owner:  # someone else's direct call to this model: leave it alone
            return None
        temb = kwargs["temb"] if "temb" in kwargs else args[1]
        if state["emb"] is None:
            # Computed here, inside forward, so that offloaded weights are already on the device.
            state["emb"] = frame_time_embedding(unet, flat.to(temb.device))
        emb = state["emb"]
        if temb is None or temb.shape != emb.shape:
            raise RuntimeError(
                f"per-frame time embedding: a ResNet block got temb of shape {None if temb is None else tuple(temb.shape)}, "
                f"expected {tuple(emb.shape)}; diffusers' UNet3DConditionModel changed"
            )
        state["calls"] += 1
        if "temb" in kwargs:
            return args, {**kwargs, "temb": emb}
        return (args[0], emb, *args[2:]), kwargs

    with model_lock(unet):
        consumers = _temb_consumers(unet)
        handles = []
        try:
            for m in consumers:
                handles.append(m.register_forward_pre_hook(substitute, with_kwargs=True))
            out = unet(sample, timesteps[:, 0], encoder_hidden_states, return_dict=False, **forward_kwargs)[0]
        finally:
            for h in handles:
                h.remove()
    if state["calls"] != len(consumers):
        raise RuntimeError(f"per-frame time embedding reached {state['calls']} of {len(consumers)} ResNet blocks")
    return out


# -- VideoCrafter2 -------------------------------------------------------------------------------

_FPS: contextvars.ContextVar[float | None] = contextvars.ContextVar("videocrafter2_fps", default=None)


class VideoCrafter2UNet(UNet3DConditionModel):
    """`UNet3DConditionModel` plus VideoCrafter2's frame-rate conditioning.

    Layout of `adamdad/videocrafterv2_diffusers` (its own loader subclasses UNet3DConditionModel
    with config flag `fps_cond`): `fps_proj = Timesteps(c0, True, 0)` (no weights) and
    `fps_embedding = TimestepEmbedding(c0, 4 * c0, act_fn)` (`fps_embedding.linear_{1,2}.*`), added
    to the output of `time_embedding` before the frames are repeated, as in VideoCrafter2, whose
    UNet adds `fps_embedding(timestep_embedding(fs))` to `time_embed(t)`.
    """

    # FIFO-Diffusion's VideoCrafter2 runs condition on 8 fps (VideoCrafter's own script passes 28).
    default_fps: float = 8.0

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "DownBlock3D",
        ),
        up_block_types: tuple[str, ...] = ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1024,
        attention_head_dim: int | tuple[int] = 64,
        num_attention_heads: int | tuple[int] | None = None,
        time_cond_proj_dim: int | None = None,
        fps_cond: bool = True,
    ):
        super().__init__(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            time_cond_proj_dim=time_cond_proj_dim,
        )
        if fps_cond:
            c0 = block_out_channels[0]
            self.fps_proj = Timesteps(c0, True, 0)
            self.fps_embedding = TimestepEmbedding(c0, c0 * 4, act_fn=act_fn)
            # Permanent (part of the model, not of a call): the frame rate comes from a context
            # variable, so concurrent calls with different rates do not see each other's.
            self.time_embedding.register_forward_hook(self._add_fps_embedding)

    def fps_embed(self, fps: float, device: torch.device) -> torch.Tensor:
        """The frame-rate term (1, 4 * c0) added to every time embedding."""
        f = torch.full((1,), float(fps), device=device)
        return self.fps_embedding(self.fps_proj(f).to(dtype=self.dtype))

    def _add_fps_embedding(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        fps = _FPS.get()
        return output + self.fps_embed(self.default_fps if fps is None else fps, output.device).to(output.dtype)

    def forward(self, sample, timestep, encoder_hidden_states, *args, fps: float | None = None, **kwargs):
        """`UNet3DConditionModel.forward` conditioned on frame rate `fps` (default `default_fps`)."""
        token = _FPS.set(fps)
        try:
            return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        finally:
            _FPS.reset(token)


# -- the backbone --------------------------------------------------------------------------------


class FrameVAEDecoder(Decoder):
    """Decodes each latent frame as an image with an SD-style AutoencoderKL; stateless."""

    def __init__(self, vae: torch.nn.Module, device: torch.device) -> None:
        self.vae = vae
        self.device = device

    @torch.no_grad()
    def decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (C, F, h, w) -> frames (F, 3, H, W) in [-1, 1]."""
        cfg = self.vae.config
        z = latents.permute(1, 0, 2, 3).to(self.device, self.vae.dtype) / cfg.scaling_factor
        if getattr(cfg, "shift_factor", None) is not None:
            z = z + cfg.shift_factor
        return self.vae.decode(z).sample.clamp(-1, 1)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents (C, F, h, w) -> uint8 frames (F, H, W, 3)."""
        return to_uint8(self.decode_float(latents))


_FALLBACK = BackboneDefaults(16, 4, True, 0.0, 9.0, 8, 256, 256)
_ZEROSCOPE = "cerspense/zeroscope_v2_576w"


class UNet3DBackbone(DiffusersBackbone):
    """ModelScope / zeroscope / VideoCrafter2: a UNet3D with per-frame timesteps, CFG, an image VAE."""

    def __init__(
        self,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoder: torch.nn.Module,
        tokenizer: Any,
        scheduler: Any,
        name: str = "unet3d",
        defaults: BackboneDefaults | None = None,
        fps_condition: float | None = None,
        device: str | torch.device | None = None,
        latent_rescale: tuple[float, float, int] | None = None,
    ) -> None:
        import dataclasses

        from diffusers import DDIMScheduler

        from ..schedule import NoiseSchedule, videocrafter_signal_scale

        self.unet, self.vae, self.text_encoder, self.tokenizer, self.scheduler = unet, vae, text_encoder, tokenizer, scheduler
        self.name = name
        self.defaults = defaults or _FALLBACK
        self.native_frames = self.defaults.frames_per_window
        self.device = torch.device(device) if device is not None else unet.device
        self.dtype = unet.dtype
        self.latent_channels = int(unet.config.in_channels)
        if int(vae.config.latent_channels) != self.latent_channels:
            raise ValueError(f"vae latent_channels={vae.config.latent_channels} but unet in_channels={self.latent_channels}")
        self.spatial_compression = 2 ** (len(vae.config.block_out_channels) - 1)
        self.temporal_compression = 1
        pred = scheduler.config.get("prediction_type", "epsilon")
        if pred not in ("epsilon", "v_prediction"):
            raise ValueError(f"{name}: prediction_type={pred!r} is not supported (epsilon or v_prediction)")
        self.prediction_type = pred
        single = scheduler
        if "Multistep" in type(scheduler).__name__ or getattr(scheduler, "order", 1) != 1:
            single = DDIMScheduler.from_config(scheduler.config)  # same betas; FIFO steps each frame alone
        self.noise_schedule = NoiseSchedule.from_scheduler(single)
        self.latent_rescale = None if latent_rescale is None else tuple(latent_rescale)
        if self.latent_rescale is not None:
            # VideoCrafter's `use_scale`: its latents carry the signal scaled by s(t) (scale_a, scale_b, mid_step)
            if len(self.latent_rescale) != 3 or pred != "epsilon":
                raise ValueError(f"latent_rescale={latent_rescale!r}: (scale_a, scale_b, mid_step), for epsilon prediction")
            scale = videocrafter_signal_scale(self.noise_schedule.num_train_timesteps, *self.latent_rescale)
            self.noise_schedule = dataclasses.replace(self.noise_schedule, signal_scale=scale)
        self.fps_condition = fps_condition
        if isinstance(unet, VideoCrafter2UNet) and unet.config.fps_cond and fps_condition is None:
            self.fps_condition = unet.default_fps
        if self.fps_condition is not None and not float(self.fps_condition) > 0:
            raise ValueError(f"fps_condition={fps_condition!r}: must be a frame rate > 0")

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        model_id: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        name: str | None = None,
        defaults: BackboneDefaults | None = None,
        base_model_id: str = _ZEROSCOPE,
        fps_condition: float | None = None,
        latent_rescale: tuple[float, float, int] | None = None,
        enable_vae_slicing: bool = False,
        enable_vae_tiling: bool = False,
        cpu_offload: bool = False,
        variant: str | None = "auto",
    ) -> "UNet3DBackbone":
        """Load from the Hub (cached after the first download): fp16 on CUDA, fp32 on CPU.

        A repository with `model_index.json` holds every component in subfolders, and all of them
        are loaded from it (VideoCrafter2's port included: its UNet config carries `fps_cond`). One
        with only a root `config.json` holds a UNet alone; the scheduler, VAE, tokenizer and text
        encoder then come from `base_model_id`. `variant="auto"` takes the fp16 files when loading
        in fp16 and the repository has them. `fps_condition`: VideoCrafter2's frame-rate input
        (default 8). `latent_rescale`: VideoCrafter's `use_scale` as (scale_a, scale_b, mid_step),
        e.g. (1.0, 0.7, 400) for VideoCrafter2; None: none. A local directory in the same layout
        works too (no Hub access).
        """
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel, CLIPTokenizer

        device = default_device(device)
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        name = name or model_id

        layout = probe_repo(model_id, ["model_index.json", "config.json"])
        if layout == "model_index.json":
            unet_sub, base = "unet", model_id
        else:
            unet_sub, base = None, base_model_id
            probe_repo(base, ["model_index.json"])
        cfg = hub_call(model_id, "UNet config", UNet3DConditionModel.load_config, model_id, subfolder=unet_sub)
        is_vc2 = "fps_cond" in cfg or "VideoCrafter" in str(cfg.get("_class_name", ""))
        unet_cls = VideoCrafter2UNet if is_vc2 else UNet3DConditionModel

        unet = with_variant(
            lambda v: load_model_strict(unet_cls, model_id, "UNet", subfolder=unet_sub, torch_dtype=dtype, variant=v), dtype, variant
        )
        scheduler = load_scheduler(base)
        tokenizer = hub_call(base, "tokenizer", CLIPTokenizer.from_pretrained, base, kind="tokenizer", subfolder="tokenizer")
        check_tokenizer(base, tokenizer)
        text_encoder = with_variant(
            lambda v: hub_call(base, "text encoder", CLIPTextModel.from_pretrained, base, subfolder="text_encoder", dtype=dtype, variant=v),
            dtype,
            variant,
        )
        vae = with_variant(
            lambda v: hub_call(base, "VAE", AutoencoderKL.from_pretrained, base, subfolder="vae", torch_dtype=dtype, variant=v),
            dtype,
            variant,
        )
        for m in (unet, text_encoder, vae):
            m.eval().requires_grad_(False)
        if enable_vae_slicing:
            vae.enable_slicing()
        if enable_vae_tiling:
            vae.enable_tiling()
        vae.to(device)  # small, and the decoder calls it outside any offload hook
        if cpu_offload:
            apply_cpu_offload([text_encoder, unet], device)
        else:
            unet.to(device), text_encoder.to(device)
        parts = (unet, vae, text_encoder, tokenizer, scheduler)
        return cls(*parts, name=name, defaults=defaults, fps_condition=fps_condition, device=device, latent_rescale=latent_rescale)

    # -- the contract --------------------------------------------------------------------------

    @torch.no_grad()
    def _encode_text(self, text: str) -> torch.Tensor:
        n = self.tokenizer.model_max_length
        tok = self.tokenizer(text, padding="max_length", max_length=n, truncation=True, return_tensors="pt")
        mask = tok.attention_mask.to(self.device) if getattr(self.text_encoder.config, "use_attention_mask", False) else None
        return self.text_encoder(tok.input_ids.to(self.device), attention_mask=mask)[0].to(self.device, self.dtype)

    def _model(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        kw = {"fps": self.fps_condition} if isinstance(self.unet, VideoCrafter2UNet) and self.unet.config.fps_cond else {}
        return per_frame_unet3d(self.unet, x, t, ctx, **kw)

    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) -> latents (C, N, h, w), each frame through the VAE's encoder."""
        from .encoders import check_frames, encode_image_vae

        return encode_image_vae(self.vae, check_frames(self, frames), self.device)

    def decoder(self) -> FrameVAEDecoder:
        """A decoder turning latent frames into images, one by one (no temporal state)."""
        return FrameVAEDecoder(self.vae, self.device)
