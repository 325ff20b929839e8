"""Training steps of the real architectures on the meta device, cut into components.

No weights and no arithmetic: the modules are built under ``torch.device("meta")`` from the
published configs (``SD15_*``, ``sdxl.SDXL_*``), so a step of SD 1.5 at 512 px or SDXL at
1024 px runs in about a second and every op sees its real shapes. A :class:`Tape` runs each
component (text encoder, UNet, VAE, identity network) as its own segment on detached inputs and
back-propagates segment by segment, so a recorder (:mod:`.flops`, :mod:`.memory`) can attribute
forward and backward work to each component; the gradients are exactly those of one graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from magicapture_pipeline.core.models.random_weights import SD15_TEXT, SD15_UNET, SD15_VAE
from magicapture_pipeline.core.models.sdxl import SDXL_TEXT, SDXL_TEXT_2, SDXL_UNET, SDXL_VAE

COMPONENTS = ("text_encoder", "unet", "vae", "identity", "loss")
META = torch.device("meta")


@dataclass(frozen=True)
class RealSize:
    """One published architecture at its training resolution."""

    family: str
    resolution: int
    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    text_2: dict[str, Any] = field(default_factory=dict)
    ar_resolution: int = 16


REAL_SIZES = {
    "sd15_512": RealSize("sd15", 512, SD15_UNET, SD15_VAE, SD15_TEXT),
    "sdxl_1024": RealSize("sdxl", 1024, SDXL_UNET, SDXL_VAE, SDXL_TEXT, SDXL_TEXT_2, 32),
}


@dataclass
class MetaModel:
    """The components of one size on the meta device (frozen; LoRA trainable)."""

    size: RealSize
    text_encoders: list[Any]
    unet: Any
    vae: Any
    arcface: Any
    taesd: Any
    dtype: torch.dtype
    device: torch.device = META  # a real device (speed_bench.gpu_run) gets random inputs

    def tensor(self, *shape: int, dtype: torch.dtype | None = None, low: float = 0.0) -> Tensor:
        """An input of ``shape``: uninitialised on the meta device, random elsewhere (uniform in
        ``[low, 1)`` when ``low`` is set, else normal)."""
        dtype = dtype or self.dtype
        if self.device.type == "meta":
            return torch.empty(*shape, device=META, dtype=dtype)
        if low:
            return torch.rand(*shape, device=self.device, dtype=dtype) * (1 - low) + low
        return torch.randn(*shape, device=self.device, dtype=dtype)

    @property
    def latent(self) -> int:
        return self.size.resolution // 8


def build_meta_model(  # noqa: PLR0913
    name: str,
    lora_preset: str = "paper",
    dtype: torch.dtype = torch.float32,
    *,
    device: torch.device = META,
    size: RealSize | None = None,
    arcface_arch: str = "r100",
) -> MetaModel:
    """The size ``name`` of :data:`REAL_SIZES` (or ``size``) on the meta device, frozen weights
    in ``dtype`` (SDXL's VAE stays fp32 under fp16, as ``vae_precision`` runs it), LoRA of
    ``lora_preset`` (``core.training.lora``) in fp32 on the UNet (and text encoders for
    ``official``). On a real ``device`` the weights are random (``speed_bench.gpu_run``)."""
    from diffusers import AutoencoderTiny
    from peft import LoraConfig, inject_adapter_in_model

    from magicapture_pipeline.core.identity.arcface import build_iresnet
    from magicapture_pipeline.core.models.random_weights import build_random_model
    from magicapture_pipeline.core.training.lora import lora_targets

    size = size or REAL_SIZES[name]
    with device:
        parts = build_random_model(
            size.unet, size.vae, size.text, resolution=size.resolution, family=size.family,
            text_2=size.text_2 or None,
        )  # fmt: skip
        arcface = build_iresnet(arcface_arch).requires_grad_(False)
        taesd = AutoencoderTiny().requires_grad_(False)
    encoders = [e for e in (parts.text_encoder, parts.text_encoder_2) if e is not None]
    vae_dtype = torch.float32 if size.family == "sdxl" and dtype == torch.float16 else dtype
    for module, wanted in ((parts.unet, dtype), (parts.vae, vae_dtype), (arcface, dtype)):
        module.to(wanted)
    taesd.to(dtype)
    for encoder in encoders:
        encoder.to(dtype)
    unet_targets, text_targets = lora_targets(lora_preset)
    with device:
        config = LoraConfig(r=4, lora_alpha=4, target_modules=unet_targets)
        unet = inject_adapter_in_model(config, parts.unet)
        if text_targets:
            encoders = [
                inject_adapter_in_model(
                    LoraConfig(r=4, lora_alpha=4, target_modules=text_targets), e
                )
                for e in encoders
            ]
    for module in (unet, *encoders):
        for pname, param in module.named_parameters():
            if "lora_" in pname:
                param.data = param.data.float()
                param.requires_grad_(True)
    for encoder in encoders:  # the [V1]/[V2] rows train: the token table gets a gradient
        encoder.get_input_embeddings().weight.requires_grad_(True)
    for module in (unet, parts.vae, arcface, taesd, *encoders):
        module.eval()  # frozen networks run in eval mode (ArcFace's BatchNorm on one face)
    return MetaModel(size, encoders, unet, parts.vae, arcface, taesd, dtype, torch.device(device))


def trainable_parameters(model: MetaModel) -> list[Tensor]:
    """Every parameter that gets a gradient in stage two (LoRA + token tables)."""
    return [
        p
        for module in (model.unet, *model.text_encoders)
        for p in module.parameters()
        if p.requires_grad
    ]


class Recorder:
    """What a tape reports to: one context per (component, phase). The base records nothing."""

    @contextlib.contextmanager
    def segment(self, component: str, phase: str) -> Iterator[None]:
        yield


@dataclass
class _Segment:
    component: str
    leaves: list[Tensor | None]
    sources: list[Tensor]
    output: Tensor
    key: Any = None  # what makes the segment's work the same elsewhere (speed_bench.flops cache)
    replayed: bool = False


class Tape:
    """Runs components as segments on detached inputs; :meth:`backward` replays the chain."""

    def __init__(self, recorder: Recorder | None = None) -> None:
        self.recorder = recorder or Recorder()
        self.segments: list[_Segment] = []

    def run(
        self, component: str, fn: Callable[..., Tensor], *inputs: Tensor, key: Any = None
    ) -> Tensor:
        """``fn(*inputs)`` as one segment of ``component``; the output keeps its graph. ``key``
        names the segment's work apart from its inputs' shapes (a subclass may reuse it)."""
        leaves = [
            x.detach().requires_grad_(True) if x.requires_grad else x.detach() for x in inputs
        ]
        with self.recorder.segment(component, "forward"):
            output = fn(*leaves)
        keep = [leaf if leaf.requires_grad else None for leaf in leaves]
        self.segments.append(_Segment(component, keep, list(inputs), output, key))
        return output

    def backward(self, loss: Tensor) -> None:
        """Back-propagate ``loss`` (an output of the last segment) through every segment."""
        grads: dict[int, Tensor] = {id(loss): torch.ones_like(loss)}
        for seg in reversed(self.segments):
            grad = grads.pop(id(seg.output), None)
            if grad is None or not seg.output.requires_grad:
                continue
            for source, got in self._segment_backward(seg, grad):
                held = grads.get(id(source))
                grads[id(source)] = got if held is None else held + got
        self.segments.clear()

    def _segment_backward(self, seg: _Segment, grad: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``[(segment input, its gradient)]`` of one segment's backward."""
        with self.recorder.segment(seg.component, "backward"):
            seg.output.backward(grad)
        return [
            (source, leaf.grad)
            for leaf, source in zip(seg.leaves, seg.sources, strict=True)
            if leaf is not None and leaf.grad is not None
        ]


# --------------------------------------------------------------------------- the step's parts


def encode_prompt(tape: Tape, model: MetaModel, batch: int = 1) -> tuple[Tensor, Tensor | None]:
    """Text states (and SDXL's pooled embedding) of ``batch`` 77-token prompts."""
    ids = torch.zeros(batch, 77, dtype=torch.long, device=model.device)
    key = ("text", batch, _trainable(*model.text_encoders))
    if model.size.family != "sdxl":
        text = model.text_encoders[0]
        return tape.run("text_encoder", lambda: text(ids).last_hidden_state, key=key), None
    first, second = model.text_encoders

    def both() -> Tensor:
        one = first(ids, output_hidden_states=True).hidden_states[-2]
        out = second(ids, output_hidden_states=True)
        return torch.cat([one, out.hidden_states[-2], _pad(out.text_embeds, one)], dim=-1)

    states = tape.run("text_encoder", both, key=key)
    pooled_dim = second.config.projection_dim
    width = states.shape[-1] - pooled_dim
    # split inside segments, so the gradients of both parts reach the text encoders' segment
    return (
        tape.run("loss", lambda s: s[..., :width], states),
        tape.run("loss", lambda s: s[:, 0, width:], states),
    )


def _pad(pooled: Tensor, like: Tensor) -> Tensor:  # pooled (B, P) carried as (B, 77, P)
    return pooled[:, None, :].expand(-1, like.shape[1], -1)


def unet_forward(  # noqa: PLR0913
    tape: Tape,
    model: MetaModel,
    states: Tensor,
    pooled: Tensor | None,
    batch: int = 1,
    refocus: Any = None,
) -> tuple[Tensor, Tensor | None]:
    """One UNet forward on a noisy latent at the size's resolution: the prediction, and Eq. 8's
    value from the maps ``refocus`` (an installed capture) recorded, if given."""
    side = model.latent
    noisy = model.tensor(batch, 4, side, side)
    timestep = torch.full((batch,), 500, device=model.device, dtype=torch.long)
    res = float(model.size.resolution)
    ids = torch.tensor([[res, res, 0.0, 0.0, res, res]] * batch, device=model.device)

    def forward(s: Tensor, *pool: Tensor) -> Tensor:
        extra: dict[str, Any] = {}
        if pool:  # SDXL: the pooled embedding is a segment input too
            extra = {"added_cond_kwargs": {"text_embeds": pool[0].to(model.dtype), "time_ids": ids}}
        pred = model.unet(noisy, timestep, s.to(model.dtype), **extra).sample
        if refocus is None:
            return pred
        # Eq. 8 reads the captured maps of this forward: carried out of the segment beside pred
        # every stored map stays in the graph (the authors' way keeps them all until backward)
        kept = sum(m.float().mean() for ms_ in refocus._maps.values() for m in ms_)
        return torch.cat([pred.flatten().float(), kept.reshape(1)])

    kind = None if refocus is None else (tuple(refocus.layer_names), refocus.keep_heads)
    key = ("unet", batch, kind, _trainable(model.unet))
    out = tape.run("unet", forward, states, *([] if pooled is None else [pooled]), key=key)
    if refocus is None:
        return out, None
    pred = tape.run("loss", lambda o: o[:-1].view(batch, 4, side, side), out)
    return pred, tape.run("loss", lambda o: o[-1], out)


def face_window(model: MetaModel, margin: int) -> tuple[int, int, int, int]:
    """The latent window ``identity.decode_region: face_window`` decodes, for the benchmark's
    face (its aligned square 0.53 of the side, centred)."""
    from magicapture_pipeline.core.identity.arcface import face_latent_window
    from magicapture_pipeline.speed_bench.harness import _bench_landmarks

    marks = _bench_landmarks(model.size.resolution)
    return face_latent_window(marks, (model.latent, model.latent), 8, margin)


def identity_term(tape: Tape, model: MetaModel, pred: Tensor, decoder: str, margin: int) -> Tensor:
    """Eq. 7 on the x0 estimate of ``pred``: decode (``full`` VAE, ``face_window`` or ``taesd``),
    warp to 112 px (``grid_sample``, as ``align_faces``), ArcFace, cosine loss."""
    top, bottom, left, right = 0, model.latent, 0, model.latent
    if decoder == "face_window":
        top, bottom, left, right = face_window(model, margin)

    def decode(p: Tensor) -> Tensor:
        x0 = p[..., top:bottom, left:right] * 0.5  # one-step estimate: elementwise
        if decoder == "taesd":
            return model.taesd.decode(x0.to(model.taesd.dtype)).sample
        return model.vae.decode(x0.to(model.vae.dtype)).sample

    image = tape.run("vae", decode, pred, key=("vae", decoder, top, bottom, left, right))

    def embed(img: Tensor) -> Tensor:
        grid = model.tensor(img.shape[0], 112, 112, 2, dtype=img.dtype, low=-1.0)
        aligned = F.grid_sample(img, grid, align_corners=False)
        return model.arcface(aligned.to(model.dtype))

    return tape.run("identity", embed, image, key=("identity",))  # the loss segment reduces it


def _trainable(*modules: Any) -> int:
    """How many parameters of ``modules`` train now (stage one freezes the LoRA)."""
    return sum(p.requires_grad for m in modules for p in m.parameters())


def capture(model: MetaModel, every_layer: bool) -> Any:
    """Eq. 8's capture processor at the size's resolution (the authors' way: every attention
    layer, every head)."""
    from magicapture_pipeline.core.models.attention import CrossAttentionCapture

    if not every_layer:
        return CrossAttentionCapture(model.unet, resolution=model.size.ar_resolution)
    names = [n for n, _ in model.unet.named_modules() if n.endswith(("attn1", "attn2"))]
    return CrossAttentionCapture(model.unet, layer_names=names, keep_heads=True)
