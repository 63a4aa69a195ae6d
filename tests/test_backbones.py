"""The real-model adapters (UNet3D family, Wan family) on tiny random-weight models: offline, CPU.

What is proven here: per-frame timestep injection is exact (equal to the stock forward where the
timesteps agree, equal to per-frame stock calls where the frames are made independent), hooks never
outlive a call, concurrent calls do not mix, CFG runs in one batched call, the causal VAE streams
exactly, loading is strict and fails fast offline, and each backbone runs through `fifo.generate`.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLWan,
    DDIMScheduler,
    SkyReelsV2Transformer3DModel,
    UNet3DConditionModel,
    UniPCMultistepScheduler,
    WanTransformer3DModel,
)
from diffusers.models.resnet import ResnetBlock2D, TemporalConvLayer
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

import fifo
from fifo.backbones.base import BackboneDefaults
from fifo.backbones.unet3d import (
    CheckpointMismatchError,
    PromptEmbeds,
    UNet3DBackbone,
    VideoCrafter2UNet,
    WeightsUnavailableError,
    model_lock,
    per_frame_unet3d,
)
from fifo.backbones.wan import SkyReelsDFBackbone, WanBackbone, WanStreamDecoder

torch.set_num_threads(1)  # tiny models: threads cost more than they give, and tests run side by side
WORDS = "a red ball cat dog moving right left the on blue green sky over".split()


# -- tiny components -----------------------------------------------------------------------------


def jitter(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Perturb every weight, so zero-initialised output projections are live too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval().requires_grad_(False)


def clip_parts():
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for w in WORDS:
        vocab[w + "</w>"] = len(vocab)
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    return tok, CLIPTextModel(cfg).eval()


def sd_vae():
    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8), latent_channels=4, norm_num_groups=4, layers_per_block=1,
    )  # fmt: skip
    return vae.eval()


UNET_KW = dict(
    sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), block_out_channels=(8, 16), layers_per_block=1,
    norm_num_groups=4, cross_attention_dim=16, attention_head_dim=4,
)  # fmt: skip


def tiny_unet(fps: bool):
    torch.manual_seed(2)
    unet = VideoCrafter2UNet(**UNET_KW) if fps else UNet3DConditionModel(**UNET_KW)
    return jitter(unet, 3)


def ddim():
    return DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=False
    )


UNET_DEFAULTS = BackboneDefaults(
    frames_per_window=3, partitions=1, lookahead=False, eta=0.0, guidance_scale=2.0, fps=8, height=16, width=16
)


def unet_backbone(fps: bool, **kw) -> UNet3DBackbone:
    tok, te = clip_parts()
    name = "tiny-vc2" if fps else "tiny-unet3d"
    return UNet3DBackbone(tiny_unet(fps), sd_vae(), te, tok, ddim(), name=name, defaults=UNET_DEFAULTS, **kw)


def umt5_parts():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["<pad>", "</s>", "<unk>"] + WORDS
    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(4)
    cfg = UMT5Config(
        vocab_size=len(words), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, relative_attention_num_buckets=8
    )
    return tok, UMT5EncoderModel(cfg).eval()


def wan_vae():
    torch.manual_seed(5)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0],
    )  # fmt: skip
    return jitter(vae, 6, 0.02)


WAN_KW = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
    freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
)  # fmt: skip


def tiny_transformer(skyreels: bool):
    torch.manual_seed(7)
    model = SkyReelsV2Transformer3DModel(**WAN_KW, inject_sample_info=True) if skyreels else WanTransformer3DModel(**WAN_KW)
    return jitter(model, 8)


def unipc():
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


WAN_DEFAULTS = BackboneDefaults(
    frames_per_window=3, partitions=1, lookahead=False, eta=0.0, guidance_scale=2.0, fps=16, height=32, width=32
)


def wan_backbone(skyreels: bool) -> WanBackbone:
    tok, te = umt5_parts()
    cls = SkyReelsDFBackbone if skyreels else WanBackbone
    name = "tiny-skyreels" if skyreels else "tiny-wan"
    return cls(tiny_transformer(skyreels), wan_vae(), te, tok, unipc(), name=name, defaults=WAN_DEFAULTS, max_sequence_length=8)


def hook_counts(model: torch.nn.Module) -> list[tuple[int, int, int]]:
    return [(len(m._forward_pre_hooks), len(m._forward_hooks), len(m._backward_hooks)) for m in model.modules()]


@pytest.fixture(scope="module")
def unet_bbs():
    return {False: unet_backbone(False), True: unet_backbone(True)}


@pytest.fixture(scope="module")
def wan_bbs():
    return {False: wan_backbone(False), True: wan_backbone(True)}


def latents(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# -- what the adapters rely on in diffusers --------------------------------------------------------


def test_diffusers_still_has_what_the_adapters_use():
    """Fails loudly when a diffusers upgrade renames or reshapes what unet3d.py / wan.py hook or call."""
    unet = tiny_unet(False)
    assert hasattr(unet, "time_proj") and hasattr(unet, "time_embedding")
    assert list(inspect.signature(unet.time_embedding.forward).parameters)[:2] == ["sample", "condition"]
    fwd = inspect.signature(UNet3DConditionModel.forward).parameters
    assert list(fwd)[1:4] == ["sample", "timestep", "encoder_hidden_states"] and "return_dict" in fwd
    res = [m for m in unet.modules() if isinstance(m, ResnetBlock2D)]
    assert res and all(m.time_emb_proj is not None for m in res)
    assert list(inspect.signature(ResnetBlock2D.forward).parameters)[1:3] == ["input_tensor", "temb"]
    # forward builds one embedding per row and repeats it over the frames: the thing we replace
    assert "repeat_interleave(num_frames" in inspect.getsource(UNet3DConditionModel.forward)
    # VideoCrafter2UNet must take every config key the stock class takes
    base = set(inspect.signature(UNet3DConditionModel.__init__).parameters)
    assert base <= set(inspect.signature(VideoCrafter2UNet.__init__).parameters)
    # temporal layers the exactness tests zero
    assert hasattr(TemporalConvLayer(8, 8, norm_num_groups=4), "conv4")
    assert hasattr(unet.transformer_in, "proj_out") and isinstance(unet.transformer_in, TransformerTemporalModel)
    # Wan: per-token timesteps, the VAE's cache API
    assert "timestep_seq_len" in inspect.signature(type(tiny_transformer(False).condition_embedder).forward).parameters
    sky = inspect.signature(SkyReelsV2Transformer3DModel.forward).parameters
    assert "enable_diffusion_forcing" in sky and "fps" in sky
    vae = wan_vae()
    assert all(hasattr(vae, a) for a in ("post_quant_conv", "decoder", "clear_cache", "_decode", "temperal_downsample"))
    dec = inspect.signature(type(vae.decoder).forward).parameters
    assert list(dec)[1:5] == ["x", "feat_cache", "feat_idx", "first_chunk"]
    assert "flow_shift" in unipc().config and "latents_mean" in vae.config and "latents_std" in vae.config


# -- UNet3D: per-frame injection -------------------------------------------------------------------


def zero_temporal(unet: torch.nn.Module) -> torch.nn.Module:
    """Temporal convs and temporal transformers become identities, so frames no longer interact."""
    unet = copy.deepcopy(unet)
    with torch.no_grad():
        for m in unet.modules():
            if isinstance(m, TemporalConvLayer):
                m.conv4[-1].weight.zero_(), m.conv4[-1].bias.zero_()
            elif isinstance(m, TransformerTemporalModel):
                m.proj_out.weight.zero_(), m.proj_out.bias.zero_()
    return unet


@pytest.mark.parametrize("fps", [False, True], ids=["unet3d", "videocrafter2"])
def test_unet_uniform_timesteps_equal_the_stock_forward(unet_bbs, fps):
    unet = unet_bbs[fps].unet
    x, ctx = latents((2, 4, 3, 8, 8), 0), latents((2, 5, 16), 1)
    t = torch.tensor([[500.0] * 3, [21.0] * 3])
    kw = {"fps": 12.0} if fps else {}
    with torch.no_grad():
        ours = per_frame_unet3d(unet, x, t, ctx, **kw)
        stock = unet(x, t[:, 0], ctx, **kw).sample
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fps", [False, True], ids=["unet3d", "videocrafter2"])
def test_unet_mixed_timesteps_equal_per_frame_stock_calls(unet_bbs, fps):
    unet = zero_temporal(unet_bbs[fps].unet)
    f = 3
    x, ctx = latents((1, 4, f, 8, 8), 2), latents((1, 5, 16), 3)
    t = torch.tensor([[900.0, 250.0, 7.0]])
    with torch.no_grad():
        ours = per_frame_unet3d(unet, x, t, ctx)
        # one stock call, row k = the same clip with every frame at t_k
        stock = unet(x.expand(f, -1, -1, -1, -1), t[0], ctx.expand(f, -1, -1)).sample
    for k in range(f):
        torch.testing.assert_close(ours[0, :, k], stock[k, :, k], atol=1e-5, rtol=0)
        # and the timestep matters: frame k at another frame's timestep is different
        assert (stock[(k + 1) % f, :, k] - ours[0, :, k]).abs().max() > 1e-3


def test_videocrafter2_fps_changes_the_output(unet_bbs):
    unet = unet_bbs[True].unet
    x, ctx, t = latents((1, 4, 2, 8, 8), 4), latents((1, 5, 16), 5), torch.tensor([300.0])
    with torch.no_grad():
        a, b = unet(x, t, ctx, fps=8.0).sample, unet(x, t, ctx, fps=28.0).sample
    assert (a - b).abs().max() > 1e-4


def test_no_hook_outlives_a_call_even_on_exception(unet_bbs):
    bb = unet_bbs[False]
    before = hook_counts(bb.unet)
    cond = bb.encode_prompt("a red ball")
    x, t = latents((1, 4, 3, 8, 8), 6), torch.tensor([[10.0, 20.0, 30.0]])
    bb.denoise(x, t, cond, 2.0)
    assert hook_counts(bb.unet) == before

    def boom(*_):
        raise RuntimeError("boom inside the model")

    h = bb.unet.conv_out.register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom inside the model"):
            bb.denoise(x, t, cond, 2.0)
    finally:
        h.remove()
    assert hook_counts(bb.unet) == before
    # the lock was released: another thread can take it
    got = []

    def take_lock():
        lock = model_lock(bb.unet)
        got.append(lock.acquire(timeout=5))
        lock.release()

    th = threading.Thread(target=take_lock)
    th.start(), th.join()
    assert got == [True]


def test_concurrent_calls_on_a_shared_model_do_not_mix(unet_bbs):
    # one VideoCrafter2 UNet shared by two backbones (own frame rates), three threads, own timesteps
    a = unet_bbs[True]
    b = copy.copy(a)
    b.fps_condition = 10.0
    cond = a.encode_prompt("a cat")
    x = latents((1, 4, 3, 8, 8), 7)
    jobs = {
        "a1": (a, torch.tensor([[900.0, 500.0, 100.0]])),
        "a2": (a, torch.tensor([[50.0, 60.0, 70.0]])),  # the same backbone object, other timesteps
        "b": (b, torch.tensor([[50.0, 60.0, 70.0]])),  # another backbone on the same UNet, other fps
    }
    alone = {k: bb.denoise(x, t, cond, 1.0) for k, (bb, t) in jobs.items()}
    assert (alone["a1"] - alone["a2"]).abs().max() > 1e-3 and (alone["a2"] - alone["b"]).abs().max() > 1e-4
    barrier, results, errors = threading.Barrier(len(jobs)), {k: [] for k in jobs}, []

    def run(k):
        bb, t = jobs[k]
        try:
            barrier.wait()
            for _ in range(3):
                results[k].append(bb.denoise(x, t, cond, 1.0))
        except Exception as e:  # surfaced below; a thread's exception would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in jobs]
    [th.start() for th in threads], [th.join() for th in threads]
    assert not errors
    for k in jobs:
        for r in results[k]:
            torch.testing.assert_close(r, alone[k], atol=1e-6, rtol=0)
    assert hook_counts(a.unet) == hook_counts(tiny_unet(True))


def test_direct_calls_from_another_thread_are_left_alone(unet_bbs):
    """While one thread's per-frame call is inside the model, a plain call from another gets stock results."""
    unet = unet_bbs[False].unet
    x, ctx, t = latents((1, 4, 3, 8, 8), 18), latents((1, 5, 16), 19), torch.tensor([400.0])
    with torch.no_grad():
        solo = unet(x, t, ctx).sample
    parked, release = threading.Event(), threading.Event()

    def park(*_):
        parked.set(), release.wait(10)

    h = unet.conv_out.register_forward_pre_hook(park)  # after every ResNet: the per-frame hooks are in place

    def per_frame():
        with torch.no_grad():
            per_frame_unet3d(unet, x, torch.tensor([[10.0, 20.0, 30.0]]), ctx)

    th = threading.Thread(target=per_frame)
    th.start()
    try:
        assert parked.wait(10)
        h.remove()
        with torch.no_grad():
            during = unet(x, t, ctx).sample
    finally:
        h.remove(), release.set(), th.join()
    torch.testing.assert_close(during, solo, atol=1e-6, rtol=0)


def test_per_frame_injection_under_accelerate_offload_hooks():
    """cpu_offload wraps forward with accelerate hooks (execution device CPU here): same numbers."""
    from fifo.backbones.hub import offload_chain

    bb = unet_backbone(True)
    x, t = latents((1, 4, 3, 8, 8), 17), torch.tensor([[600.0, 300.0, 10.0]])
    ref = bb.denoise(x, t, bb.encode_prompt("a red ball"), 2.0)
    offload_chain([bb.text_encoder, bb.unet], torch.device("cpu"))
    assert hasattr(bb.unet, "_hf_hook") and hasattr(bb.text_encoder, "_hf_hook")
    torch.testing.assert_close(bb.denoise(x, t, bb.encode_prompt("a red ball"), 2.0), ref, atol=1e-6, rtol=0)


# -- classifier-free guidance ------------------------------------------------------------------------


def record_calls(model: torch.nn.Module) -> tuple[list, object]:
    calls = []

    def rec(module, args, kwargs):
        sample = kwargs.get("hidden_states", args[0] if args else None)
        calls.append(sample.shape[0])

    return calls, model.register_forward_pre_hook(rec, with_kwargs=True)


@pytest.mark.parametrize("family", ["unet3d", "wan", "skyreels"])
def test_cfg_is_one_batched_call(unet_bbs, wan_bbs, family):
    bb = {"unet3d": unet_bbs[False], "wan": wan_bbs[False], "skyreels": wan_bbs[True]}[family]
    model = bb.unet if family == "unet3d" else bb.transformer
    shape = (2, 4, 3, 8, 8) if family == "unet3d" else (2, 4, 3, 4, 4)
    x = latents(shape, 8)
    t = torch.tensor([[800.0, 400.0, 20.0], [600.0, 300.0, 5.0]])
    c1, c2 = bb.encode_prompt("a red ball", "blue sky"), bb.encode_prompt("a green dog moving left")
    calls, h = record_calls(model)
    try:
        cond_only = bb.denoise(x, t, c1, 1.0)
        assert calls == [2]
        guided = bb.denoise(x, t, c1, 3.0)
        assert calls == [2, 4]
        per_row = bb.denoise(x, t, [c1, c2], 3.0)
        assert calls == [2, 4, 4]
    finally:
        h.remove()
    uncond = bb.denoise(x, t, PromptEmbeds(c1.negative, c1.negative), 1.0)
    torch.testing.assert_close(guided, uncond + 3.0 * (cond_only - uncond), atol=1e-5, rtol=0)
    row1 = bb.denoise(x[1:], t[1:], c2, 3.0)
    torch.testing.assert_close(per_row[1:], row1, atol=1e-5, rtol=0)
    torch.testing.assert_close(per_row[:1], guided[:1], atol=1e-5, rtol=0)
    assert guided.shape == x.shape and guided.dtype == torch.float32


def test_prompt_embeddings_have_batch_one_and_wan_zeroes_padding(unet_bbs, wan_bbs):
    c = unet_bbs[False].encode_prompt("a red ball")
    assert c.positive.shape == c.negative.shape == (1, 77, 16)
    w = wan_bbs[False].encode_prompt("a red ball", "")
    assert w.positive.shape == (1, 8, 16)
    assert w.positive[0, 4:].abs().max() == 0 and w.positive[0, :4].abs().min() > 0  # 3 words + </s>
    assert w.negative[0, 1:].abs().max() == 0  # "" is just </s>


# -- Wan / SkyReels: per-frame timesteps -------------------------------------------------------------


def zero_self_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Self-attention outputs zero: each token then depends only on itself, the text and its timestep."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for block in model.blocks:
            block.attn1.to_out[0].weight.zero_(), block.attn1.to_out[0].bias.zero_()
    return model


def stock_call(bb, model, x, t_rows, ctx):
    """The stock forward with one timestep per batch row."""
    kw = {"fps": [1]} if isinstance(bb, SkyReelsDFBackbone) else {}
    return model(hidden_states=x, timestep=t_rows, encoder_hidden_states=ctx, return_dict=False, **kw)[0]


@pytest.mark.parametrize("skyreels", [False, True], ids=["wan", "skyreels"])
def test_wan_uniform_timesteps_equal_the_stock_forward(wan_bbs, skyreels):
    bb = wan_bbs[skyreels]
    x, ctx = latents((2, 4, 3, 4, 4), 9), latents((2, 8, 16), 10)
    t = torch.tensor([[700.0] * 3, [35.0] * 3])
    with torch.no_grad():
        ours = bb._model(x, t, ctx)
        stock = stock_call(bb, bb.transformer, x, t[:, 0], ctx)
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)


@pytest.mark.parametrize("skyreels", [False, True], ids=["wan", "skyreels"])
def test_wan_mixed_timesteps_equal_per_frame_stock_calls(wan_bbs, skyreels):
    bb = copy.copy(wan_bbs[skyreels])
    bb.transformer = zero_self_attention(bb.transformer)
    f = 3
    x, ctx = latents((1, 4, f, 4, 4), 11), latents((1, 8, 16), 12)
    t = torch.tensor([[950.0, 400.0, 12.0]])
    with torch.no_grad():
        ours = bb._model(x, t, ctx)
        stock = stock_call(bb, bb.transformer, x.expand(f, -1, -1, -1, -1), t[0], ctx.expand(f, -1, -1))
    for k in range(f):
        torch.testing.assert_close(ours[0, :, k], stock[k, :, k], atol=1e-5, rtol=0)
        assert (stock[(k + 1) % f, :, k] - ours[0, :, k]).abs().max() > 1e-3


def test_flow_schedule_takes_the_shipped_shift(wan_bbs):
    bb = wan_bbs[False]
    assert bb.prediction_type == "flow" and bb.noise_schedule.kind == "flow" and bb.noise_schedule.shift == 3.0
    assert (bb.temporal_compression, bb.spatial_compression, bb.latent_channels) == (4, 8, 4)
    with pytest.raises(ValueError, match="multiples of 16"):
        bb.latent_size(40, 32)


# -- decoders ------------------------------------------------------------------------------------------


def test_image_vae_decoder_decodes_each_frame(unet_bbs):
    bb = unet_bbs[False]
    z = latents((4, 3, 8, 8), 13)
    frames = bb.decoder().decode(z)
    assert frames.shape == (3, 16, 16, 3) and frames.dtype == np.uint8
    with torch.no_grad():
        ref = bb.vae.decode(z.permute(1, 0, 2, 3) / bb.vae.config.scaling_factor).sample.clamp(-1, 1)
    ref = ((ref / 2 + 0.5) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(frames.astype(int) - ref.astype(int)).max() <= 1


def test_causal_vae_streams_exactly_and_resumes(wan_bbs, tmp_path):
    vae = wan_bbs[False].vae
    z = latents((4, 6, 4, 4), 14)
    dec = WanStreamDecoder(vae, torch.device("cpu"))
    with torch.no_grad():
        whole = vae.decode(z[None] * dec._std + dec._mean).sample[0].permute(1, 0, 2, 3)  # (1 + 4*5, 3, 32, 32)
    assert whole.shape[0] == 21
    parts, counts = [], []
    for chunk in (z[:, :1], z[:, 1:3]):
        out = dec.decode_float(chunk)
        parts.append(out), counts.append(out.shape[0])
    state = dec.state_dict()
    assert all(c.device.type == "cpu" for c in state["cache"] if torch.is_tensor(c))
    torch.save(state, tmp_path / "dec.pt")
    resumed = WanStreamDecoder(vae, torch.device("cpu"))
    resumed.load_state_dict(torch.load(tmp_path / "dec.pt", weights_only=True))
    for i in range(3, 6):
        out = resumed.decode_float(z[:, i : i + 1])
        parts.append(out), counts.append(out.shape[0])
    assert counts == [1, 8, 4, 4, 4]
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-4, rtol=0)
    frames = WanStreamDecoder(vae, torch.device("cpu")).decode(z[:, :2])
    assert frames.shape == (5, 32, 32, 3) and frames.dtype == np.uint8


# -- loading -----------------------------------------------------------------------------------------


def save_unet_pipeline(root, unet=None):
    """A local diffusers-layout copy of the tiny UNet3D pipeline."""
    bb = unet_backbone(False)
    (unet or bb.unet).save_pretrained(root / "unet")
    bb.vae.save_pretrained(root / "vae")
    bb.text_encoder.save_pretrained(root / "text_encoder")
    bb.tokenizer.save_pretrained(root / "tokenizer")
    bb.scheduler.save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "TextToVideoSDPipeline"}))
    return bb


def test_unet3d_loads_a_local_copy(tmp_path):
    bb = save_unet_pipeline(tmp_path / "ms")
    loaded = UNet3DBackbone.from_pretrained(str(tmp_path / "ms"), device="cpu", defaults=UNET_DEFAULTS)
    assert type(loaded.unet) is UNet3DConditionModel and loaded.dtype == torch.float32
    x, t = latents((1, 4, 3, 8, 8), 15), torch.tensor([[100.0, 200.0, 300.0]])
    ours, ref = loaded.denoise(x, t, loaded.encode_prompt("a cat"), 2.0), bb.denoise(x, t, bb.encode_prompt("a cat"), 2.0)
    torch.testing.assert_close(ours, ref)


def test_videocrafter2_loads_strictly(tmp_path):
    save_unet_pipeline(tmp_path / "base")
    vc2 = tiny_unet(True)
    vc2.save_pretrained(tmp_path / "vc2")  # the port's layout: the UNet at the repository root
    cfg = json.loads((tmp_path / "vc2" / "config.json").read_text())
    assert cfg["fps_cond"] is True
    base = str(tmp_path / "base")
    bb = UNet3DBackbone.from_pretrained(str(tmp_path / "vc2"), device="cpu", base_model_id=base, defaults=UNET_DEFAULTS)
    assert isinstance(bb.unet, VideoCrafter2UNet) and bb.fps_condition == VideoCrafter2UNet.default_fps
    for name, p in vc2.state_dict().items():
        assert torch.equal(p, bb.unet.state_dict()[name]), name
    # the stock class would drop the fps weights: strict loading refuses
    from fifo.backbones.hub import load_model_strict

    with pytest.raises(CheckpointMismatchError, match="unexpected keys.*fps_embedding"):
        load_model_strict(UNet3DConditionModel, str(tmp_path / "vc2"), "UNet")
    # a checkpoint without them cannot pass as VideoCrafter2
    from safetensors.torch import load_file, save_file

    path = tmp_path / "vc2" / "diffusion_pytorch_model.safetensors"
    save_file({k: v for k, v in load_file(path).items() if not k.startswith("fps_embedding")}, path)
    with pytest.raises(CheckpointMismatchError, match="missing keys.*fps_embedding"):
        UNet3DBackbone.from_pretrained(str(tmp_path / "vc2"), device="cpu", base_model_id=base)


@pytest.mark.parametrize("skyreels", [False, True], ids=["wan", "skyreels"])
def test_wan_loads_a_local_copy(tmp_path, wan_bbs, skyreels):
    bb = wan_bbs[skyreels]
    root = tmp_path / "wan"
    bb.transformer.save_pretrained(root / "transformer")
    bb.vae.save_pretrained(root / "vae")
    bb.text_encoder.save_pretrained(root / "text_encoder")
    bb.tokenizer.save_pretrained(root / "tokenizer")
    bb.scheduler.save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    cls = type(bb)
    loaded = cls.from_pretrained(str(root), device="cpu", defaults=WAN_DEFAULTS, max_sequence_length=8)
    assert type(loaded.transformer) is type(bb.transformer) and loaded.vae.dtype == torch.float32
    x, t = latents((1, 4, 3, 4, 4), 16), torch.tensor([[100.0, 200.0, 300.0]])
    ours, ref = loaded.denoise(x, t, loaded.encode_prompt("a cat"), 2.0), bb.denoise(x, t, bb.encode_prompt("a cat"), 2.0)
    torch.testing.assert_close(ours, ref)


def test_offline_without_weights_fails_fast_naming_the_model(tmp_path):
    """HF_HUB_OFFLINE=1 and an empty HF_HOME: every registry model fails at once with one clear line."""
    code = (
        "import fifo, time, fifo.backbones.unet3d, fifo.backbones.wan  # imports outside the timing\n"
        "for name, spec in sorted(fifo.BACKBONES.items()):\n"
        "    if spec.model_id is None: continue\n"
        "    t = time.time()\n"
        "    try:\n"
        "        fifo.load_backbone(name, device='cpu')\n"
        "        print('LOADED', name)\n"
        "    except Exception as e:\n"
        "        std = isinstance(e, (RuntimeError, ValueError))\n"
        "        print('ERR', name, type(e).__name__, std, round(time.time() - t, 1), '|', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("HF_TOKEN", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=240)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("ERR", "LOADED"))]
    assert len(lines) == sum(s.model_id is not None for s in fifo.BACKBONES.values()), out.stdout + out.stderr
    for ln in lines:
        _, name, kind, is_std, secs, _, msg = ln.split(" ", 6)
        spec = fifo.BACKBONES[name]
        assert kind == WeightsUnavailableError.__name__ and is_std == "True", ln
        assert float(secs) < 10, ln
        assert spec.model_id in msg and "download" in msg and "HF_TOKEN" in msg, ln


def test_registry_entries():
    expect = {
        "modelscope": ("unet3d:UNet3DBackbone", 16, 256, 256),
        "zeroscope": ("unet3d:UNet3DBackbone", 24, 320, 576),
        "videocrafter2": ("unet3d:UNet3DBackbone", 16, 320, 512),
        "wan2.1-1.3b": ("wan:WanBackbone", (81 - 1) // 4 + 1, 480, 832),
        "skyreels-v2-df-1.3b": ("wan:SkyReelsDFBackbone", (97 - 1) // 4 + 1, 544, 960),
        "fastwan2.1-1.3b": ("wan:WanBackbone", (57 - 1) // 4 + 1, 448, 832),
    }
    for name, (cls, f, h, w) in expect.items():
        spec = fifo.BACKBONES[name]
        d = spec.defaults
        assert (spec.cls, d.frames_per_window, d.height, d.width) == (cls, f, h, w), name
        assert spec.licence and spec.vram_gb and spec.needs_gpu


# -- end to end through the engine ------------------------------------------------------------------


@pytest.mark.parametrize("family", ["unet3d", "videocrafter2", "wan", "skyreels"])
def test_generate_runs_each_tiny_backbone(unet_bbs, wan_bbs, family):
    bb = {"unet3d": unet_bbs[False], "videocrafter2": unet_bbs[True], "wan": wan_bbs[False], "skyreels": wan_bbs[True]}[family]
    n = 6
    frames = list(fifo.generate(bb, "a red ball moving right", n, seed=1))
    d = bb.defaults
    assert len(frames) == n
    assert all(fr.shape == (d.height, d.width, 3) and fr.dtype == np.uint8 for fr in frames)
    again = list(fifo.generate(bb, "a red ball moving right", n, seed=1))
    assert all(np.array_equal(a, b) for a, b in zip(frames, again))
