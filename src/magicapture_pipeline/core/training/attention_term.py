"""Eq. 8 wiring: attention refocusing in stage two, and the attention report behind the heatmaps.

The loss itself is :func:`core.losses.attention_refocusing_loss`; the cross-attention capture is
:class:`core.attention.CrossAttentionCapture`. This module picks the placeholder tokens present
in a prompt, pairs each with its region ([V1]: the face, [V2]: the rest) and measures where the
attention mass lies on fixed inputs (:meth:`AttentionTerm.attention_report`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from magicapture_pipeline.core import losses
from magicapture_pipeline.core.training.examples import REFERENCE, TrainingExample


def mass_fraction(maps: Tensor, regions: Tensor) -> float:
    """Share of the attention mass of ``maps`` (N, 1, h, w) that lies inside ``regions``."""
    total = maps.flatten(1).sum(1).clamp_min(1e-12)
    inside = (maps * regions).flatten(1).sum(1)
    return float((inside / total).mean())


class AttentionTerm:
    """Mixin of :class:`StageTwoTrainer`: attention refocusing (Eq. 8) and its report."""

    def _token_positions(self, ids: Tensor) -> list[tuple[int, int]]:
        """``[(position in the 77 tokens, index into self.tokens)]`` of placeholders present."""
        found = []
        row = ids[0].tolist()
        for k, token_id in enumerate(self.token_ids):
            if token_id in row:
                found.append((row.index(token_id), k))
        return found

    def _attention_term(self, ids: Tensor, example: TrainingExample) -> Tensor | None:
        """Eq. 8 for the placeholders in the prompt; a token whose region is empty (a reference
        without a face has no region for [V1]) is left out rather than pushed off the image."""
        if self.capture is None:
            return None
        has_face = bool(example.face_mask.sum() > 0)
        has_rest = bool((1.0 - example.face_mask).sum() > 0)
        positions = [
            (p, k) for p, k in self._token_positions(ids) if (has_face if k == 0 else has_rest)
        ]
        if not positions:
            return None
        order = self.config.attention.scale_order
        maps = self.capture.token_maps(
            [[p for p, _ in positions]], per_map=order == "scale_then_average"
        )
        masks = torch.cat(
            [self._region_mask(example, inside_face=k == 0) for _, k in positions], dim=1
        )
        return losses.attention_refocusing_loss(maps.float(), masks.float(), order=order)

    @torch.no_grad()
    def attention_report(
        self,
        role: str = REFERENCE,
        timestep_fraction: float = 0.5,
        seed: int = 1234,
        max_examples: int = 8,
    ) -> dict[str, Any]:
        """[V1]/[V2] cross-attention maps on fixed inputs, and how much mass is in each region.

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

        cfg = self.config
        person, style = cfg.tokens.person, cfg.tokens.style
        if role == REFERENCE:
            prompt = cfg.composed_templates[0].format(v1=person, v2=style)
        else:
            prompt = cfg.source_templates[0].format(person)
        generator = torch.Generator().manual_seed(seed)
        cond = self._encode_prompt(prompt)
        positions = self._token_positions(cond.ids)
        t = int(timestep_fraction * self.noise_scheduler.config.num_train_timesteps)
        timesteps = torch.tensor([t], device=self.device)
        own = self.capture is None
        capture = self.capture or CrossAttentionCapture(
            self.unet, resolution=cfg.attention.resolution, layer_names=cfg.attention.layers or None
        )
        if own:
            capture.install()
        maps, masks, images = [], [], []
        try:
            for variants in self.variants[role][:max_examples]:
                variant = variants[0]
                mean = variant.latent_mean
                if mean is None:
                    mean, _ = self._encode(variant.example.image)
                latents = (mean * self.scaling).to(self.device)
                noise = torch.randn(latents.shape, generator=generator).to(self.device)
                self._predict(
                    self.noise_scheduler.add_noise(latents, noise, timesteps), timesteps, cond
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
