"""UNet3D family: ModelScope T2V, zeroscope v2, VideoCrafter2 (diffusers `UNet3DConditionModel`).

`UNet3DConditionModel.forward` computes ONE time embedding per batch row and repeats it over the
frames before handing it to every ResNet block as `temb`, shape (B*F, C). FIFO-Diffusion needs a
timestep per frame, so `per_frame_unet3d` computes the (B*F, C) embedding from the model's own
`time_proj` / `time_embedding` modules and substitutes it with forward pre-hooks on the ResNet
blocks, for the duration of one call, under a per-model lock. diffusers' forward is not copied.

VideoCrafter2's diffusers port (`adamdad/videocrafterv2_diffusers`) is a UNet3D whose time
embedding also gets `fps_embedding(fps_proj(fps))` added; `VideoCrafter2UNet` adds those modules
and every UNet of this family is loaded with strict key matching.

This module also holds the Hub loading helpers the Wan adapter shares (`hub_call`,
`WeightsUnavailableError`, `PromptEmbeds`).
"""

from __future__ import annotations

import contextvars
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from diffusers import UNet3DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps

from .base import Backbone, BackboneDefaults, Decoder

# -- loading helpers (shared with wan.py) --------------------------------------------------------


class WeightsUnavailableError(RuntimeError):
    """Model weights are neither in the local Hugging Face cache nor downloadable right now."""

    def __init__(self, model_id: str, what: str, reason: BaseException | str) -> None:
        super().__init__(
            f"cannot load {model_id!r} ({what}): {_why(reason)}; fetch it with `hf download {model_id}` "
            f"(or `huggingface-cli download {model_id}`), set HF_TOKEN for a gated or private repository, or go online"
        )
        self.model_id = model_id


def _why(reason: BaseException | str) -> str:
    """One short clause for what went wrong (the libraries' own messages run to several lines)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError

    if isinstance(reason, GatedRepoError):
        return "the repository is gated: accept its terms on the Hub"
    if isinstance(reason, RepositoryNotFoundError):
        return "no such repository on the Hub, or it is private"
    if isinstance(reason, (LocalEntryNotFoundError, OfflineModeIsEnabled)) or (
        isinstance(reason, OSError) and constants.HF_HUB_OFFLINE
    ):
        if constants.HF_HUB_OFFLINE:
            return "not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading"
        return "not in the local Hugging Face cache, and the Hub could not be reached"
    text = str(reason).strip()
    text = text.splitlines()[0] if text else type(reason).__name__
    return text if len(text) <= 160 else text[:157] + "..."


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys do not match the model class built for it (strict loading)."""


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import EntryNotFoundError

    # OSError covers what diffusers/transformers raise for missing files, LocalEntryNotFoundError,
    # RepositoryNotFoundError, GatedRepoError, HfHubHTTPError and OfflineModeIsEnabled.
    return (OSError, EntryNotFoundError)


def hub_call(model_id: str, what: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Run a `from_pretrained`-style call; a missing or unreachable file becomes WeightsUnavailableError."""
    try:
        return fn(*args, **kwargs)
    except _hub_errors() as e:
        raise WeightsUnavailableError(model_id, what, e) from None


def probe_repo(model_id: str, filenames: Sequence[str]) -> str:
    """The first of `filenames` the repository has (downloading it); fails fast when offline and uncached."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    if os.path.isdir(model_id):  # a local copy (save_pretrained layout): no Hub access at all
        for name in filenames:
            if os.path.isfile(os.path.join(model_id, name)):
                return name
        raise WeightsUnavailableError(model_id, "local directory", f"it has no {' or '.join(filenames)}")
    last: BaseException | None = None
    for name in filenames:
        try:
            hf_hub_download(model_id, name)
            return name
        except EntryNotFoundError as e:  # that file is not there (or not cached): try the next layout
            last = e
        except OSError as e:
            raise WeightsUnavailableError(model_id, "repository index", e) from None
    raise WeightsUnavailableError(model_id, "repository index", last or f"no {' or '.join(filenames)}")


def check_tokenizer(model_id: str, tokenizer: Any) -> None:
    """Refuse the special-tokens-only tokenizer transformers returns (no error) when the files are missing."""
    if len(tokenizer) < 10:
        raise WeightsUnavailableError(model_id, "tokenizer", f"tokenizer files missing (vocabulary of {len(tokenizer)})")


def load_model_strict(cls: type, model_id: str, what: str, **kwargs) -> torch.nn.Module:
    """`cls.from_pretrained` that refuses missing, unexpected or mis-shaped keys instead of warning."""
    model, info = hub_call(model_id, what, cls.from_pretrained, model_id, output_loading_info=True, **kwargs)
    problems = []
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        found = info.get(key) or []
        if found:
            names = sorted(k[0] if isinstance(k, tuple) else k for k in found)
            problems.append(f"{len(names)} {key.replace('_', ' ')} (e.g. {', '.join(names[:4])})")
    if info.get("error_msgs"):
        problems.append(f"errors: {info['error_msgs'][:2]}")
    if problems:
        raise CheckpointMismatchError(f"{model_id} {what}: checkpoint does not match {cls.__name__}: {'; '.join(problems)}")
    return model


def load_scheduler(model_id: str, subfolder: str | None = "scheduler"):
    """The scheduler a repository ships, built from its config by class name (no remote code)."""
    import diffusers

    kw = {"subfolder": subfolder} if subfolder else {}
    cfg = hub_call(model_id, "scheduler config", diffusers.DDIMScheduler.load_config, model_id, **kw)
    cls = getattr(diffusers, str(cfg.get("_class_name", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ValueError(f"{model_id}: unknown scheduler class {cfg.get('_class_name')!r}")
    return cls.from_config(cfg)


def default_device(device: str | torch.device | None) -> torch.device:
    """CUDA when present, else CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def spec_defaults(model_id: str, cls_path: str) -> tuple[str, BackboneDefaults] | None:
    """(name, defaults) of the registry entry loading `model_id` with `cls_path`, if there is one."""
    from .registry import BACKBONES

    for spec in BACKBONES.values():
        if spec.model_id == model_id and spec.cls == cls_path:
            return spec.name, spec.defaults
    return None


def apply_cpu_offload(modules: Sequence[torch.nn.Module], device: torch.device) -> None:
    """Keep `modules` on the CPU, each moved to `device` only while it is the one running (accelerate)."""
    if device.type != "cuda":
        raise ValueError(f"cpu_offload=True needs a CUDA device, not {device}")
    offload_chain(modules, device)


def offload_chain(modules: Sequence[torch.nn.Module], device: torch.device) -> None:
    """accelerate's model offload hooks, chained in a cycle: running one module offloads the one before.

    A cycle, not diffusers' one-way chain, because FIFO encodes new prompts between denoising calls
    (prompt schedules), and the text encoder should then push the denoiser out, not join it.
    """
    from accelerate import cpu_offload_with_hook

    hooks = []
    for m in modules:
        _, hook = cpu_offload_with_hook(m, device, prev_module_hook=hooks[-1] if hooks else None)
        hooks.append(hook)
    if len(hooks) > 1:
        hooks[0].hook.prev_module_hook = hooks[-1]


def with_variant(load: Callable[[str | None], Any], dtype: torch.dtype, variant: str | None) -> Any:
    """`load(variant)`; "auto" takes the half-size fp16 files for fp16 when the repository has them."""
    if variant != "auto":
        return load(variant)
    if dtype == torch.float16:
        try:
            return load("fp16")
        except WeightsUnavailableError:
            pass
    return load(None)


@dataclass(frozen=True)
class PromptEmbeds:
    """One encoded prompt: positive and negative text embeddings, batch dim 1 each."""

    positive: torch.Tensor  # (1, S, D)
    negative: torch.Tensor  # (1, S, D)


def stack_conds(cond: PromptEmbeds | Sequence[PromptEmbeds], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) embeddings (B, S, D) for one cond shared by all rows or one cond per row."""
    conds = [cond] * batch if isinstance(cond, PromptEmbeds) else list(cond)
    if len(conds) != batch or not all(isinstance(c, PromptEmbeds) for c in conds):
        raise ValueError(f"cond: expected one PromptEmbeds or a sequence of {batch} (one per batch row), got {len(conds)} items")
    return torch.cat([c.positive for c in conds]), torch.cat([c.negative for c in conds])


def guided(
    model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    guidance_scale: float,
) -> torch.Tensor:
    """Classifier-free guidance with both halves in one batched call; scale 1 runs the conditional half alone."""
    if guidance_scale == 1:
        return model(x, t, pos).float()
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([neg, pos])).float()
    uncond, cond = out.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """Frames (N, 3, H, W) in [-1, 1] to uint8 (N, H, W, 3)."""
    x = ((video.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


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

    default_fps: float = 28.0  # VideoCrafter2's run_text2video.sh passes --fps 28

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


class UNet3DBackbone(Backbone):
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
    ) -> None:
        from diffusers import DDIMScheduler

        from ..schedule import NoiseSchedule

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
        self.fps_condition = fps_condition
        if isinstance(unet, VideoCrafter2UNet) and unet.config.fps_cond and fps_condition is None:
            self.fps_condition = unet.default_fps

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
        enable_vae_slicing: bool = False,
        enable_vae_tiling: bool = False,
        cpu_offload: bool = False,
        variant: str | None = "auto",
    ) -> "UNet3DBackbone":
        """Load from the Hub (cached after the first download): fp16 on CUDA, fp32 on CPU.

        A repository with `model_index.json` holds every component in subfolders; one with only a
        root `config.json` (VideoCrafter2's port) holds the UNet, the rest comes from `base_model_id`
        (as the port's own loader does). `variant="auto"` takes the fp16 files when loading in fp16
        and the repository has them. `fps_condition`: VideoCrafter2's frame-rate input (default 28).
        A local directory in the same layout works too (no Hub access).
        """
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel, CLIPTokenizer

        device = default_device(device)
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        found = spec_defaults(model_id, "unet3d:UNet3DBackbone")
        name = name or (found[0] if found else model_id)
        defaults = defaults or (found[1] if found else None)

        layout = probe_repo(model_id, ["model_index.json", "config.json"])
        if layout == "model_index.json":
            unet_src, unet_sub, base = model_id, "unet", model_id
        else:
            unet_src, unet_sub, base = model_id, None, base_model_id
            probe_repo(base, ["model_index.json"])
        sub = {"subfolder": unet_sub} if unet_sub else {}
        cfg = hub_call(unet_src, "UNet config", UNet3DConditionModel.load_config, unet_src, **sub)
        is_vc2 = "fps_cond" in cfg or "VideoCrafter" in str(cfg.get("_class_name", ""))
        unet_cls = VideoCrafter2UNet if is_vc2 else UNet3DConditionModel

        unet = with_variant(
            lambda v: load_model_strict(unet_cls, unet_src, "UNet", torch_dtype=dtype, variant=v, **sub), dtype, variant
        )
        scheduler = load_scheduler(base)
        tokenizer = hub_call(base, "tokenizer", CLIPTokenizer.from_pretrained, base, subfolder="tokenizer")
        check_tokenizer(base, tokenizer)
        text_encoder = with_variant(
            lambda v: hub_call(
                base, "text encoder", CLIPTextModel.from_pretrained, base, subfolder="text_encoder", dtype=dtype, variant=v
            ),
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
        return cls(*parts, name=name, defaults=defaults, fps_condition=fps_condition, device=device)

    # -- the contract --------------------------------------------------------------------------

    @torch.no_grad()
    def _encode_text(self, text: str) -> torch.Tensor:
        n = self.tokenizer.model_max_length
        tok = self.tokenizer(text, padding="max_length", max_length=n, truncation=True, return_tensors="pt")
        mask = tok.attention_mask.to(self.device) if getattr(self.text_encoder.config, "use_attention_mask", False) else None
        return self.text_encoder(tok.input_ids.to(self.device), attention_mask=mask)[0].to(self.device, self.dtype)

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> PromptEmbeds:
        """CLIP embeddings of the prompt and the negative prompt ("" is the unconditional one)."""
        return PromptEmbeds(self._encode_text(prompt), self._encode_text(negative_prompt or ""))

    def _model(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        kw = {"fps": self.fps_condition} if isinstance(self.unet, VideoCrafter2UNet) and self.unet.config.fps_cond else {}
        return per_frame_unet3d(self.unet, x, t, ctx, **kw)

    @torch.no_grad()
    def denoise(
        self, latents: torch.Tensor, timesteps: torch.Tensor, cond: PromptEmbeds | Sequence[PromptEmbeds], guidance_scale: float
    ) -> torch.Tensor:
        """Noise (or v) prediction (B, C, F, h, w), float32, each frame at its own timestep; CFG batched."""
        b, _, f = latents.shape[:3]
        if timesteps.shape != (b, f):
            raise ValueError(f"timesteps shape {tuple(timesteps.shape)}: expected (B, F) = {(b, f)}")
        pos, neg = stack_conds(cond, b)
        x = latents.to(self.device, self.dtype)
        t = timesteps.to(self.device, torch.float32)
        return guided(self._model, x, t, pos.to(self.device, self.dtype), neg.to(self.device, self.dtype), float(guidance_scale))

    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) -> latents (C, N, h, w), each frame through the VAE's encoder."""
        from .encoders import check_frames, encode_image_vae

        return encode_image_vae(self.vae, check_frames(self, frames), self.device)

    def decoder(self) -> FrameVAEDecoder:
        """A decoder turning latent frames into images, one by one (no temporal state)."""
        return FrameVAEDecoder(self.vae, self.device)
