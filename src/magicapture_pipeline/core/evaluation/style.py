"""CLIP-based metrics of the paper's protocol (Experiments: Comparisons): masked style
similarity, aesthetic score.

- Style: the mean pairwise cosine over (reference x generated) CLIP image embeddings, with the
  face region masked out of both, by one rule for both sides (preprocessing's reference rule,
  ``FaceRegions.style_mask``): a detected face the mesh outlines loses its oval, one the mesh
  cannot outline its detection boxes, and an image with no detected face is scored whole, as a
  reference without a face is (issue 18 §4). The pairwise mean, not the cosine to the mean
  embedding, which is inflated by the mean vector's length; the authors' identity helper
  ``evaluate_pipe`` in ``lora_diffusion_/utils.py`` averages pairwise cosines the same way.
- Aesthetic: the LAION aesthetic predictor, an MLP (or the older linear head) on L2-normalised
  CLIP ViT-L/14 image embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

MASK_FILL = (127, 127, 127)  # neutral grey where the face was (close to CLIP's mean colour)


def pairwise_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(n, m)`` cosine similarities between the rows of ``a`` ``(n, d)`` and ``b`` ``(m, d)``."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    a = a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)
    b = b / (np.linalg.norm(b, axis=1, keepdims=True) + 1e-12)
    return a @ b.T


def mean_pairwise_cosine(vector: np.ndarray, others: Sequence[np.ndarray]) -> float:
    """Mean of ``cos(vector, o)`` over ``others`` (not the cosine to their mean)."""
    return float(pairwise_cosines(vector, np.stack(list(others))).mean())


# --------------------------------------------------------------------------- CLIP


def mask_out(image: Image.Image, mask: Image.Image | None) -> Image.Image:
    """``image`` with the face region (mask > 127) filled with neutral grey."""
    rgb = image.convert("RGB")
    if mask is None:
        return rgb
    keep = np.asarray(mask.convert("L").resize(rgb.size, Image.NEAREST)) <= 127
    array = np.asarray(rgb).copy()
    array[~keep] = MASK_FILL
    return Image.fromarray(array)


@dataclass
class ClipEmbedder:
    """CLIP image tower + its preprocessing; ``embed`` returns L2-normalised projected vectors."""

    model: Any
    processor: Any
    device: str = "cpu"

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        inputs = self.processor(images=[i.convert("RGB") for i in images], return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, dtype=next(self.model.parameters()).dtype)
        if hasattr(self.model, "get_image_features"):
            features = self.model.get_image_features(pixel_values=pixels)
        else:
            features = self.model(pixel_values=pixels).image_embeds
        if not isinstance(features, torch.Tensor):  # transformers 5 may return an output object
            embeds = getattr(features, "image_embeds", None)
            features = embeds if embeds is not None else features.pooler_output
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.cpu().numpy()


def load_clip(
    path_or_id: str | None, local_files_only: bool = True, device: str = "cpu"
) -> tuple[ClipEmbedder | None, str | None]:
    """CLIP from a folder or hub id (``CLIPVisionModelWithProjection``, else ``CLIPModel``)."""
    if not path_or_id:
        return None, "no CLIP model configured (evaluation.clip_model)"
    from transformers import CLIPImageProcessor, CLIPModel, CLIPVisionModelWithProjection

    from magicapture_pipeline.core.models.devices import resolve_device

    device = resolve_device(device)
    errors = []
    for cls in (CLIPVisionModelWithProjection, CLIPModel):
        try:
            model = cls.from_pretrained(path_or_id, local_files_only=local_files_only)
            processor = CLIPImageProcessor.from_pretrained(
                path_or_id, local_files_only=local_files_only
            )
        except Exception as error:  # noqa: BLE001 - each class is tried, reasons are kept
            errors.append(f"{cls.__name__}: {str(error).splitlines()[0]}")
            continue
        return ClipEmbedder(model.eval().to(device), processor, device), None
    where = " from local files (offline)" if local_files_only else ""
    return None, (
        f"CLIP {path_or_id} could not be loaded{where}; set evaluation.clip_model to a local "
        f"copy of CLIP ViT-L/14 ({errors[0][:160]})"
    )


@dataclass
class StyleResult:
    """Per-image masked CLIP style similarity and what was masked."""

    per_image: dict[str, float]
    masked: dict[str, bool] = field(default_factory=dict)

    @property
    def mean(self) -> float | None:
        return float(np.mean(list(self.per_image.values()))) if self.per_image else None


def style_similarity(
    clip: ClipEmbedder,
    generated: Mapping[str, Image.Image],
    references: Sequence[Image.Image],
    generated_masks: Mapping[str, Image.Image | None] | None = None,
    reference_masks: Sequence[Image.Image | None] | None = None,
) -> StyleResult:
    """Mean pairwise cosine of CLIP embeddings, face-masked generated vs face-masked references.

    Each generated image scores the mean of its cosines to every reference; the set's score is
    the mean over generated images, i.e. the mean over all (reference x generated) pairs.

    Args:
        clip: a loaded ``ClipEmbedder``.
        generated: key -> generated image.
        references: the style reference images.
        generated_masks: key -> face mask (255 = face) or None where no face was found.
        reference_masks: one face mask (or None) per reference image.
    """
    generated_masks = generated_masks or {}
    reference_masks = (
        list(reference_masks) if reference_masks is not None else [None] * len(references)
    )
    masked_refs = [mask_out(r, m) for r, m in zip(references, reference_masks, strict=True)]
    reference_vectors = list(clip.embed(masked_refs))
    keys = sorted(generated)
    masked_gen = [mask_out(generated[k], generated_masks.get(k)) for k in keys]
    vectors = clip.embed(masked_gen) if keys else []
    return StyleResult(
        {
            k: mean_pairwise_cosine(v, reference_vectors)
            for k, v in zip(keys, vectors, strict=True)
        },
        {k: generated_masks.get(k) is not None for k in keys},
    )


# --------------------------------------------------------------------------- aesthetic


class AestheticMLP(torch.nn.Module):
    """LAION's improved aesthetic predictor head (``layers.*``) on a CLIP image embedding."""

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_size, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_aesthetic(path: str | Path | None) -> tuple[torch.nn.Module | None, str | None]:
    """The LAION aesthetic head from a state dict (MLP ``layers.*`` or the v1 linear head)."""
    if not path:
        return None, "no LAION aesthetic predictor weights configured (evaluation.aesthetic_model)"
    if not Path(path).is_file():
        return None, f"aesthetic predictor weights {path} do not exist"
    state = _read_state_dict(path)
    if "layers.0.weight" in state:
        head: torch.nn.Module = AestheticMLP(state["layers.0.weight"].shape[1])
    elif "weight" in state and state["weight"].ndim == 2:
        head = torch.nn.Linear(state["weight"].shape[1], 1)
    else:
        return None, f"{path} is neither the LAION MLP (layers.*) nor the linear head (weight)"
    head.load_state_dict(state)
    return head.eval(), None


@torch.no_grad()
def aesthetic_scores(
    head: torch.nn.Module, clip: ClipEmbedder, images: Mapping[str, Image.Image]
) -> dict[str, float]:
    """LAION aesthetic score of each image (the head sees the L2-normalised CLIP embedding)."""
    keys = sorted(images)
    if not keys:
        return {}
    embeddings = torch.from_numpy(clip.embed([images[k] for k in keys]))
    expected = next(head.parameters()).shape[1]
    if embeddings.shape[1] != expected:
        raise ValueError(
            f"aesthetic head expects {expected}-d CLIP embeddings, the CLIP gives "
            f"{embeddings.shape[1]} (LAION's head needs ViT-L/14)"
        )
    scores = head(embeddings.float()).squeeze(-1)
    return {k: float(s) for k, s in zip(keys, scores, strict=True)}
