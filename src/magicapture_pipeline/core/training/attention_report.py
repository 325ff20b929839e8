"""The attention report behind stage two's heatmaps: where the [V1]/[V2] attention mass lies.

Measured on fixed inputs (fixed noise and timestep, never the training generator), so training is
unaffected; Eq. 8 on these maps is reported beside the mass fractions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from magicapture_pipeline.core import losses
from magicapture_pipeline.core.training.attention_term import mass_fraction, placeholder_positions
from magicapture_pipeline.core.training.examples import REFERENCE

if TYPE_CHECKING:
    from magicapture_pipeline.core.training.stage_two import StageTwoTrainer


@torch.no_grad()
def attention_report(
    trainer: StageTwoTrainer,
    role: str = REFERENCE,
    timestep_fraction: float = 0.5,
    seed: int = 1234,
    max_examples: int = 8,
) -> dict[str, Any]:
    """[V1]/[V2] cross-attention maps of ``trainer`` on fixed inputs, and how much mass is in each
    region.

    ``role="reference"``: the composed prompt over the reference images (the pseudo-label
    task); ``role="source"``: the source prompt over the source images. Each image (not
    flipped, at most ``max_examples``) is noised to ``t = timestep_fraction * T`` with noise
    from ``seed`` (never the training generator, so training is unaffected) and run through
    the UNet once while the configured attention layers are captured.

    Returns:
        ``v1_mass_in_face``: mean over images that have a face of the share of [V1]'s
        attention inside the face mask; ``v2_mass_outside_face``: the same for [V2] outside
        it (over all images; NaN when the prompt lacks the token);
        ``v1_scaled_mass_in_face``: the same share for the min-max scaled [V1] map (what
        Eq. 8 sees); ``v1_peak_in_face``: share of those images whose [V1] maximum lies in
        the face; ``attention_loss``: Eq. 8 on these maps; ``maps`` (N, 2, h, w) with
        zeros for an absent token; ``face_masks`` (N, 1, h, w) at map size; ``images``.
    """
    from magicapture_pipeline.core.models.attention import CrossAttentionCapture

    cfg = trainer.config
    person, style = cfg.tokens.person, cfg.tokens.style
    if role == REFERENCE:
        prompt = cfg.composed_templates[0].format(v1=person, v2=style)
    else:
        prompt = cfg.source_templates[0].format(person)
    generator = torch.Generator().manual_seed(seed)
    cond = trainer._encode_prompt(prompt)
    positions = placeholder_positions(cond.ids, trainer.token_ids)
    t = int(timestep_fraction * trainer.noise_scheduler.config.num_train_timesteps)
    timesteps = torch.tensor([t], device=trainer.device)
    installed = trainer.attention_term.capture if trainer.attention_term is not None else None
    own = installed is None
    capture = installed or CrossAttentionCapture(
        trainer.unet,
        resolution=cfg.attention.resolution,
        layer_names=cfg.attention.layers or None,
        latent_size=trainer.latent_size,
    )
    if own:
        capture.install()
    maps, masks, images = [], [], []
    try:
        for variants in trainer.variants[role][:max_examples]:
            variant = variants[0]
            mean = variant.latent_mean
            if mean is None:
                mean, _ = trainer._encode(variant.example.image)
            latents = (mean * trainer.scaling).to(trainer.device)
            noise = torch.randn(latents.shape, generator=generator).to(trainer.device)
            trainer._predict(
                trainer.noise_scheduler.add_noise(latents, noise, timesteps), timesteps, cond
            )
            picked = capture.token_maps([[p for p, _ in positions]]).float().cpu()[0]
            both = torch.zeros(2, *picked.shape[-2:])
            for row, (_, k) in enumerate(positions):
                both[k] = picked[row]
            maps.append(both)
            mask = variant.example.face_mask.unsqueeze(0).float()
            masks.append(F.interpolate(mask, size=picked.shape[-2:], mode="area")[0])
            images.append(variant.example.image)
    finally:
        if own:
            capture.remove()
        else:
            capture.clear()
    stacked, face = torch.stack(maps), torch.stack(masks)
    present = {k for _, k in positions}
    has_face = face.flatten(1).sum(1) > 0
    v1 = float("nan")
    if 0 in present and bool(has_face.any()):
        v1 = mass_fraction(stacked[has_face, 0:1], face[has_face])
    v2 = mass_fraction(stacked[:, 1:2], 1.0 - face) if 1 in present else float("nan")
    scaled = losses.min_max_scale(stacked)
    v1_scaled = v1_peak = float("nan")
    if 0 in present and bool(has_face.any()):
        v1_scaled = mass_fraction(scaled[has_face, 0:1], face[has_face])
        peak = stacked[has_face, 0].flatten(1).argmax(1)
        v1_peak = float(
            (face[has_face, 0].flatten(1).gather(1, peak[:, None]) > 0.5).float().mean()
        )
    regions = torch.cat([face, 1.0 - face], dim=1)
    keep = sorted(present)
    return {
        "v1_mass_in_face": v1,
        "v2_mass_outside_face": v2,
        "v1_scaled_mass_in_face": v1_scaled,
        "v1_peak_in_face": v1_peak,
        "attention_loss": float(
            losses.attention_refocusing_loss(stacked[:, keep], regions[:, keep])
        ),
        "maps": stacked,
        "face_masks": face,
        "images": torch.stack(images),
    }
