"""The steps timed through the project's own trainers (the default engine), and the figures
and ratios the benchmark reports."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from magicapture_pipeline.speed_bench.harness import (
    _bench_landmarks,
    _face_mask,
    _stage_one_context,
)
from magicapture_pipeline.speed_bench.sizes import (
    AR_RESOLUTION,
    BenchModel,
)


class TrainerBench:
    """The same figures measured with the project's own trainers (``core.training``).

    One :class:`StageOneTrainer` per latent mode (cached / encoded every step) and one
    :class:`StageTwoTrainer` (composed task only, gradient accumulation 1) whose switches are
    flipped between variants: the capture processor installed or not (Eq. 8), the ArcFace encoder
    attached or not and ``identity.mode`` (Eq. 7). ``identity.threshold_fraction`` is set to 1 so
    the identity branch runs on every step (its cost when active). The identity variants set
    ``identity.decode_region`` / ``identity.autocast_dtype``: the speed options (``face_window``,
    ``bf16``) for ``stage2_id_single_pass_step_s`` and ``two_pass``, ``face_window`` without
    autocast for ``..._window_fp32``, ``full`` without autocast (the paper's and authors' decode,
    the default) for ``..._full``, and the speed options with ``identity.decoder:
    tiny_autoencoder`` (a TAESD-architecture decoder, random weights) for ``..._tiny_decoder``.

    Args:
        model: the size's components (moved to ``device`` by the trainers).
        arcface_arch: IResNet of the identity loss.
        device: ``cpu`` or ``cuda[:n]``.
        mixed_precision: the trainers' ``mixed_precision`` (``no``/``fp16``/``bf16``; forced to
            ``no`` on CPU by ``core.training.build_accelerator``).
    """

    def __init__(
        self,
        model: BenchModel,
        arcface_arch: str,
        device: str = "cpu",
        mixed_precision: str = "no",
    ) -> None:
        from magicapture_pipeline.core.models.loading import SDComponents
        from magicapture_pipeline.core.training import TrainingExample

        self.m = model
        self.arcface_arch = arcface_arch
        self.device = torch.device(device)
        self.mixed_precision = mixed_precision if self.device.type == "cuda" else "no"
        self.tiny_decoder: Any = None
        self.components = SDComponents(
            model.tokenizer, model.text_encoder, model.vae, model.unet, model.scheduler, "bench",
            family=model.family, tokenizer_2=model.tokenizer_2,
            text_encoder_2=model.text_encoder_2,
        )  # fmt: skip
        resolution = model.resolution
        generator = torch.Generator().manual_seed(0)
        face = torch.nn.functional.adaptive_avg_pool2d(_face_mask(resolution), resolution // 8)
        landmarks = _bench_landmarks(resolution)[0]
        self.examples = [
            TrainingExample(
                f"{role}{index}",
                role,
                torch.rand(3, resolution, resolution, generator=generator) * 2 - 1,
                face[0].clone(),
                landmarks.clone(),
            )
            for role in ("source", "reference")
            for index in range(2)
        ]
        self.minimum: dict[str, float] = {}
        self.peak_gpu_mb: dict[str, float] = {}
        self.one: dict[bool, Any] = {}
        self.two: Any = None
        self.attention: Any = None
        self.identity: Any = None
        self.capture: Any = None
        self.encoder: Any = None
        self.stage = ""

    def setup_stage_one(self) -> None:
        """A cached and an uncached stage-one trainer on the same components."""
        from magicapture_pipeline.config.training import StageOneConfig
        from magicapture_pipeline.core.training import StageOneTrainer

        for cached in (True, False):
            config = StageOneConfig(
                gradient_accumulation_steps=1,
                cache_latents=cached,
                hflip=False,
                mixed_precision=self.mixed_precision,
                device=str(self.device),
            )
            self.one[cached] = StageOneTrainer(self.components, self.examples, config)
        self.stage = "one"

    def setup_stage_two(self) -> None:
        """One stage-two trainer, composed task only, AR and identity (random IResNet) on."""
        from magicapture_pipeline.config.loss_terms import AttentionConfig, IdentityConfig
        from magicapture_pipeline.config.training import StageTwoConfig
        from magicapture_pipeline.core.models.attention import cross_attention_resolutions
        from magicapture_pipeline.core.models.builders import build_tiny_autoencoder
        from magicapture_pipeline.core.training import StageTwoTrainer

        sizes = set(cross_attention_resolutions(self.m.unet).values())
        resolution = AR_RESOLUTION if AR_RESOLUTION in sizes else min(v for v in sizes if v >= 4)
        resolution = self.m.ar_resolution or resolution
        config = StageTwoConfig(
            gradient_accumulation_steps=1,
            task_weights=[0.0, 0.0, 1.0],
            hflip=False,
            mixed_precision=self.mixed_precision,
            device=str(self.device),
            heatmap_every=0,
            identity=IdentityConfig(
                mode="single_pass",
                random_init=True,
                arch=self.arcface_arch,
                threshold_fraction=1.0,
            ),
            attention=AttentionConfig(enabled=True, resolution=resolution),
        )
        self.two = StageTwoTrainer(self.components, self.examples, config)
        self.attention = self.two.attention_term  # Eq. 8, switched off by setting None
        self.identity = self.two.identity_term  # Eq. 7, likewise
        self.capture = self.attention.capture
        self.encoder = self.identity.encoder
        self.tiny_decoder = build_tiny_autoencoder().to(self.two.device)
        self.stage = "two"

    @contextlib.contextmanager
    def _switched(
        self,
        refocus: bool,
        identity: str,
        decode_region: str | None,
        autocast: str | None,
        decoder: str = "vae",
        every_layer: bool = False,
    ):
        trainer, capture = self.two, self.capture
        settings = trainer.config.identity
        saved = (settings.decode_region, settings.autocast_dtype)
        extra = None
        if every_layer:  # the authors' way: every attention layer stores every head's map
            from magicapture_pipeline.core.models.attention import CrossAttentionCapture

            captured = set(capture.layer_names)
            others = [
                name
                for name, _ in trainer.unet.named_modules()
                if name.endswith(("attn1", "attn2")) and name not in captured
            ]
            extra = CrossAttentionCapture(trainer.unet, layer_names=others, keep_heads=True)
            extra.install()
            capture.keep_heads = True
            trainer.config.attention.scale_order = "scale_then_average"
        if refocus:
            capture.install()
            trainer.attention_term = self.attention
        else:
            capture.remove()
            trainer.attention_term = None
        trainer.identity_term = self.identity if identity != "off" else None
        if identity != "off":
            trainer.config.identity.mode = "two_pass" if identity == "two_pass" else "single_pass"
        if decode_region is not None:
            settings.decode_region = decode_region
        if autocast is not None:
            settings.autocast_dtype = autocast
        self.identity.decoder = self.tiny_decoder if decoder == "tiny_autoencoder" else None
        try:
            yield
        finally:
            if extra is not None:
                extra.remove()
                capture.keep_heads = False
                trainer.config.attention.scale_order = "average_then_scale"
            settings.decode_region, settings.autocast_dtype = saved
            self.identity.decoder = None
            capture.install()
            trainer.attention_term = self.attention
            trainer.identity_term = self.identity

    def variant(self, name: str) -> tuple[Callable[[], Any], contextlib.AbstractContextManager]:
        """The step function of a figure and the context that configures the trainer for it."""
        if name in STAGE_ONE_FIGURES:
            return self.one[name == "stage1_step_s"].step, _stage_one_context(self)
        # (refocus, identity mode, decode_region, autocast_dtype[, decoder[, every layer]]);
        # None = the trainer's default
        switches = {
            # this project's default stage-two step: Eq. 8 at one resolution (head-means), Eq. 7
            # from the training forward, full decode under bf16 autocast
            "stage2_default_step_s": (True, "single_pass", None, None),
            # the authors' way: every attention layer's maps stored per head (register_attention_
            # control), Eq. 8 scaled per map, a second UNet pass for Eq. 7, full fp32 decode
            "stage2_authors_step_s": (True, "two_pass", "full", "fp32", "vae", True),
            "plain_lora_step_s": (False, "off", None, None),
            "stage2_full_step_s": (True, "off", None, None),
            "stage2_id_single_pass_step_s": (True, "single_pass", "face_window", None),
            "stage2_id_two_pass_step_s": (True, "two_pass", "face_window", None),
            "stage2_id_single_pass_window_fp32_step_s": (
                True, "single_pass", "face_window", "none",
            ),
            "stage2_id_single_pass_full_step_s": (True, "single_pass", "full", "none"),
            "stage2_id_single_pass_tiny_decoder_step_s": (
                True, "single_pass", "face_window", None, "tiny_autoencoder",
            ),
        }[name]  # fmt: skip
        return self.two.step, self._switched(*switches)


STAGE_ONE_FIGURES = ("stage1_step_s", "stage1_uncached_step_s")
# Figures only the trainer engine measures (the harness has no switch for them).
TRAINER_FIGURES = ("stage2_default_step_s", "stage2_authors_step_s")
STAGE_TWO_FIGURES = (
    "plain_lora_step_s",
    "stage2_full_step_s",
    "stage2_id_single_pass_step_s",
    "stage2_id_two_pass_step_s",
    "stage2_id_single_pass_window_fp32_step_s",
    "stage2_id_single_pass_full_step_s",
    "stage2_id_single_pass_tiny_decoder_step_s",
)
RATIOS = {
    "stage2_full_over_plain": ("stage2_full_step_s", "plain_lora_step_s"),
    "id_single_pass_over_no_id": ("stage2_id_single_pass_step_s", "stage2_full_step_s"),
    "id_two_pass_over_no_id": ("stage2_id_two_pass_step_s", "stage2_full_step_s"),
    "cached_over_uncached_stage1": ("stage1_step_s", "stage1_uncached_step_s"),
    "id_single_pass_window_fp32_over_no_id": (
        "stage2_id_single_pass_window_fp32_step_s",
        "stage2_full_step_s",
    ),
    "id_single_pass_full_over_no_id": ("stage2_id_single_pass_full_step_s", "stage2_full_step_s"),
    "id_single_pass_tiny_decoder_over_no_id": (
        "stage2_id_single_pass_tiny_decoder_step_s",
        "stage2_full_step_s",
    ),
    # issue 10 §5: a stage-two step done the authors' way over this project's default step
    "stage2_authors_over_default": ("stage2_authors_step_s", "stage2_default_step_s"),
}
