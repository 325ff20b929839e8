"""Configuration of the first stage: demo photos, preprocessing (crops, masks) and validation.

Mirrors ``conf/base/parameters_sample_data.yml`` (``sample_data:``) and
``conf/base/parameters_preprocess.yml`` (``preprocess:``, ``validation:``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from magicapture_pipeline.config.recipes import code, library, ours


class SampleDataConfig(BaseModel):
    """How many public-domain demo photos to build (MagiCapture uses 4 to 6 of each: paper,
    Experiments: Training Details)."""

    model_config = ConfigDict(extra="forbid")

    n_source: int = Field(
        5,
        ge=1,
        le=6,
        description="Demo source photos (astronaut variants); the paper uses 4-6 per person.",
        json_schema_extra=ours(
            "5 demo photos, inside the 4 to 6 per person the paper uses (Experiments: Training "
            "Details)"
        ),
    )
    n_reference: int = Field(
        5,
        ge=1,
        le=6,
        description="Demo reference (style) images; the paper uses 4-6 per style.",
        json_schema_extra=ours(
            "5 demo images, inside the 4 to 6 per style the paper uses (Experiments: Training "
            "Details)"
        ),
    )


class PreprocessConfig(BaseModel):
    """Decoding, face detection, crops and face masks."""

    model_config = ConfigDict(extra="forbid")

    resolution: int = Field(
        512,
        ge=64,
        le=4096,
        multiple_of=8,
        description="Side of crops and image masks in px (authors' code: train_magicapture.sh "
        "--resolution=512, SD 1.5's native size; the paper states no resolution); at most 4096 "
        "(ours: 4x SDXL's 1024; more runs out of memory on any single GPU).",
        json_schema_extra=code(
            "train_magicapture.sh --resolution=512 (train() default 512 too); the paper states no "
            "training resolution"
        ),
    )
    crop_scale: float = Field(
        2.2,
        gt=1.0,
        le=6.0,
        description="Source crop side = this x the detected face box side (head and shoulders).",
        json_schema_extra=ours("a head-and-shoulders crop around the detected face box"),
    )
    detection_model: Literal[0, 1] = Field(
        1,
        description="mediapipe face detector: 0 short-range (<2 m), 1 full-range (finds "
        "several faces in wide photos).",
        json_schema_extra=ours(
            "full-range (mediapipe's own default is 0, short-range), so wide photos with several "
            "faces are seen as such"
        ),
    )
    min_detection_confidence: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Detections below this score are not counted as faces (mediapipe default).",
        json_schema_extra=library("mediapipe FaceDetection min_detection_confidence=0.5"),
    )
    min_mesh_confidence: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Source photos: face-presence score the mesh needs on the detected face; "
        "reference images: score the mesh's own detector needs to confirm a face (mediapipe "
        "default).",
        json_schema_extra=library("mediapipe FaceMesh min_detection_confidence=0.5"),
    )
    max_mesh_faces: int = Field(
        4,
        ge=1,
        le=10,
        description="Faces the mesh may return per crop; the one nearest the centre is used.",
        json_schema_extra=ours(
            "room for a few faces per crop (mediapipe's own max_num_faces is 1); the one nearest "
            "the centre is used"
        ),
    )
    mask_dilation: float = Field(
        0.0,
        ge=-0.5,
        le=0.5,
        description="Grow (>0) or shrink (<0) the face mask by this fraction of the face size; "
        "0 keeps the face-oval region like the paper's face parser.",
        json_schema_extra=ours(
            "0 keeps the mesh's face oval, the region the paper's face parser gives"
        ),
    )
    mask_feather: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="Gaussian feather sigma as a fraction of the face size; 0 = hard mask.",
        json_schema_extra=ours("0 = a hard mask, binary like the paper's M in Eq. 4-6"),
    )
    min_image_side: int = Field(
        64,
        ge=1,
        description="Decoding refuses images whose width or height is below this (px).",
        json_schema_extra=ours(
            "a floor below which decoding refuses a file; the photo rule is "
            "validation.min_image_side"
        ),
    )
    max_image_pixels: int = Field(
        64_000_000,
        ge=1,
        description="Decompression-bomb guard: largest width x height decoded (from the header; "
        "for a JPEG scaled down by max_decode_side, the reduced size).",
        json_schema_extra=ours("a decompression-bomb guard with room for 8k photos"),
    )
    max_decode_side: int = Field(
        4096,
        ge=64,
        description="A JPEG with a longer side above this is decoded by libjpeg at 1/2, 1/4 or "
        "1/8 scale (longer side still >= this), bounding memory on 8k photos (ours).",
        json_schema_extra=ours("bounds memory on 8k photos (libjpeg's reduced-size decode)"),
    )
    overlay_alpha: float = Field(
        0.45,
        ge=0.0,
        le=1.0,
        description="Opacity of the mask tint in the overlays people check.",
        json_schema_extra=ours("a mask tint a person can see through in the overlays"),
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Processes that detect, mesh, mask and draw overlays in parallel (ours, "
        "issue 19; each holds its own detector): 1 = serial in the calling process. The "
        "output is the serial path's byte for byte; each worker costs ~1-2 s to start, so "
        "more than 1 pays off from a few dozen photos.",
        json_schema_extra=ours("serial by default (issue 19): each worker costs 1-2 s to start"),
    )
    identity_backend: Literal["dlib", "none"] = Field(
        "dlib",
        description="Face embedding for the same-person rule: dlib (offline, 128-d) or none.",
        json_schema_extra=ours("dlib runs offline with bundled weights; no ArcFace weights ship"),
    )
    heldout_sources: int = Field(
        1,
        ge=0,
        description="Source photos split off before training (never trained on) to score "
        "identity on unseen photos (csim_*_heldout); ours, issue 10. 0 = none.",
        json_schema_extra=ours("issue 10: identity scored on a photo training never saw"),
    )
    heldout_min_sources: int = Field(
        5,
        ge=2,
        description="Hold photos out only when at least this many source photos are accepted "
        "(ours: with 4 or fewer, every photo trains).",
        json_schema_extra=ours("with 4 or fewer accepted photos every photo trains"),
    )


class ValidationConfig(BaseModel):
    """Rules a photo set must pass before anything trains on it (great-expectations)."""

    model_config = ConfigDict(extra="forbid")

    min_face_score: float = Field(
        0.7,
        ge=0.0,
        le=1.0,
        description="Each source photo's face detection score must be at least this.",
        json_schema_extra=ours(
            "a rule of this project's photo check; the paper has no photo check"
        ),
    )
    min_face_area_fraction: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Smallest face box area / photo area for a source photo (face too small).",
        json_schema_extra=ours("a rule of this project's photo check (face too small)"),
    )
    max_face_area_fraction: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="Largest face box area / photo area for a source photo (face cut off).",
        json_schema_extra=ours("a rule of this project's photo check (face cut off)"),
    )
    min_image_side: int = Field(
        256,
        ge=1,
        description="Shortest photo side in px; at most 2x upscaling to a 512 px crop.",
        json_schema_extra=ours("at most 2x upscaling to a 512 px crop"),
    )
    min_mask_coverage: float = Field(
        0.03,
        ge=0.0,
        le=1.0,
        description="Smallest face-mask share of a source crop (mask missing or face tiny).",
        json_schema_extra=ours("a rule of this project's photo check (mask missing or face tiny)"),
    )
    max_mask_coverage: float = Field(
        0.6,
        ge=0.0,
        le=1.0,
        description="Largest face-mask share of a source crop (mask spilling off the face).",
        json_schema_extra=ours("a rule of this project's photo check (mask spilling off the face)"),
    )
    min_phash_distance: int = Field(
        8,
        ge=0,
        le=64,
        description="Two images whose 64-bit pHashes differ in fewer bits are near-duplicates.",
        json_schema_extra=ours("a rule of this project's photo check (near-duplicates)"),
    )
    max_identity_distance: float = Field(
        0.35,
        gt=0.0,
        description="Largest dlib L2 distance of a source face to the set's median embedding "
        "(dlib's same-person threshold 0.6 is for pairs; ~half of it to the centre).",
        json_schema_extra=ours(
            "about half of dlib's same-person pair threshold 0.6, since it is measured to the "
            "set's centre"
        ),
    )
    min_source_images: int = Field(
        1,
        ge=1,
        description="Fewest source photos accepted (the paper uses 4-6).",
        json_schema_extra=ours("accept any set; the paper uses 4-6 photos"),
    )
    max_source_images: int = Field(
        20,
        ge=1,
        description="Most source photos accepted (the paper uses 4-6).",
        json_schema_extra=ours("a bound well above the paper's 4-6 photos"),
    )
    min_reference_images: int = Field(
        1,
        ge=1,
        description="Fewest reference (style) images accepted (the paper uses 4-6).",
        json_schema_extra=ours("accept any set; the paper uses 4-6 images"),
    )
    max_reference_images: int = Field(
        20,
        ge=1,
        description="Most reference (style) images accepted (the paper uses 4-6).",
        json_schema_extra=ours("a bound well above the paper's 4-6 images"),
    )

    @model_validator(mode="after")
    def _ranges_ordered(self) -> ValidationConfig:
        pairs = [
            ("min_face_area_fraction", "max_face_area_fraction"),
            ("min_mask_coverage", "max_mask_coverage"),
            ("min_source_images", "max_source_images"),
            ("min_reference_images", "max_reference_images"),
        ]
        for low, high in pairs:
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) > {high} ({getattr(self, high)})")
        return self
