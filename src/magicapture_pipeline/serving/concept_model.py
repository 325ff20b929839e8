"""The concept as an MLflow pyfunc: what ``mlflow models serve`` and ``load_model`` run.

The model config (written at registration by ``registry.register_concept``) holds everything the
model needs besides its artifacts:

* ``base_model`` / ``base_model_kind``: the portable base-model reference (``base_model.py``);
* ``sampling``: the ``SamplingConfig`` of the ``generate`` pipeline (scheduler, steps, guidance,
  LoRA scales, resolution, seed, negative prompt), so the served model samples exactly like
  ``generate`` through the same ``core.generation.prepare_pipeline`` / ``sample_image`` calls;
* ``limits``: the request limits (``ServingLimits``);
* ``concept_name``, ``commit``: written into every image's provenance chunk.

``predict`` input: a table with ``prompt`` (``[V1]`` / ``[V2]`` or ``{v1}`` / ``{v2}`` become the
concept's tokens) and optional ``seed``, ``steps``, ``guidance_scale``; it is validated whole
before any sampling (``requests.validate_request``). Output: one row per image with the prompt
used, ``seed``, ``steps``, ``guidance_scale``, ``scheduler``, the two LoRA scales, ``resolution``
and ``image``, a base64 PNG carrying the ``magicapture`` provenance chunk.
"""

from __future__ import annotations

import base64
import copy
import io
import threading
from collections.abc import Callable
from typing import Any

import mlflow.pyfunc
import pandas as pd

CONCEPT_ARTIFACT = "concept"
OUTPUT_COLUMNS = (
    "prompt",
    "seed",
    "steps",
    "guidance_scale",
    "scheduler",
    "lora_scale_unet",
    "lora_scale_text_encoder",
    "resolution",
    "image",
)


def fill_tokens(prompt: str, person: str, style: str) -> str:
    """``[V1]`` / ``{v1}`` -> the person token, ``[V2]`` / ``{v2}`` -> the style token."""
    for placeholder, token in (
        ("[V1]", person),
        ("{v1}", person),
        ("[V2]", style),
        ("{v2}", style),
    ):
        prompt = prompt.replace(placeholder, token)
    return prompt


def encode_image(image: Any, provenance: dict[str, Any] | None = None) -> str:
    """A PIL image as a base64 PNG string, with ``provenance`` in its ``magicapture`` chunk."""
    from magicapture_pipeline.core.generation.postprocess import png_bytes

    return base64.b64encode(png_bytes(image, provenance)).decode("ascii")


def decode_image(text: str, keep_metadata: bool = False) -> Any:
    """The inverse of ``encode_image``: a PIL image (RGB, or as stored with its text chunks)."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image if keep_metadata else image.convert("RGB")


def signature() -> Any:
    """Input and output schema of ``predict`` (also what the scoring server checks types with)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    # seed and steps are integers ("long"): pandas turns a gap in an integer column into NaN
    # (a float), which MLflow's schema check refuses, so give each in every row of a request or
    # in none of them.
    inputs = Schema(
        [
            ColSpec("string", "prompt"),
            ColSpec("long", "seed", required=False),
            ColSpec("long", "steps", required=False),
            ColSpec("double", "guidance_scale", required=False),
        ]
    )
    kinds = {"seed": "long", "steps": "long", "resolution": "long"}
    kinds |= {k: "double" for k in ("guidance_scale", "lora_scale_unet", "lora_scale_text_encoder")}
    outputs = Schema([ColSpec(kinds.get(name, "string"), name) for name in OUTPUT_COLUMNS])
    return ModelSignature(inputs=inputs, outputs=outputs)


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """Count a prompt's tokens with a private copy of ``tokenizer``, one call at a time.

    Hugging Face tokenizers keep their truncation and padding settings on the object and set
    them on every call, so counting on the pipeline's own tokenizer (``truncation=False``, no
    padding) while another request's generation tokenizes its negative prompt (padding to 77)
    can leave that prompt unpadded: under concurrent requests the scoring server answered 400
    ("Expected size 2 but got size 77"). Validation runs outside the generation lock, so it gets
    its own tokenizer and lock.
    """
    private, lock = copy.deepcopy(tokenizer), threading.Lock()

    def count(prompt: str) -> int:
        with lock:
            return len(private(prompt, truncation=False).input_ids)

    return count


class ConceptModel(mlflow.pyfunc.PythonModel):
    """A MagiCapture concept on its base Stable Diffusion (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        """Resolve the base model, attach the concept and set the registered sampler."""
        from magicapture_pipeline.config.generation import SamplingConfig
        from magicapture_pipeline.config.serving import ServingLimits
        from magicapture_pipeline.core.generation.sampling import concept_tokens, prepare_pipeline
        from magicapture_pipeline.serving.base_model import resolve_base_model

        config = dict(context.model_config or {})
        if "sampling" not in config:
            raise ValueError(
                "this model's config has no 'sampling' settings: it was registered by an older "
                "version of magicapture_pipeline; register the concept again"
            )
        self._sampling = SamplingConfig.model_validate(config["sampling"])
        self._limits = ServingLimits.model_validate(config.get("limits") or {})
        self._base_reference = config["base_model"]
        base = resolve_base_model(config["base_model"], config.get("base_model_kind", "hub_id"))
        self._pipe, concept = prepare_pipeline(
            base, context.artifacts[CONCEPT_ARTIFACT], self._sampling
        )
        self._person, self._style = concept_tokens(concept)
        self._concept_name = config.get("concept_name")
        self._commit = config.get("commit")
        # A diffusers pipeline is not thread-safe (the scheduler keeps its timesteps and step
        # index between calls) and the scoring server runs requests in threads: one at a time
        # per loaded model; scale with --workers (one model per worker process).
        self._lock = threading.Lock()
        self._count_tokens = token_counter(self._pipe.tokenizer)

    def validate(self, model_input: Any, max_rows: int | None = None) -> list[Any]:
        """The request's rows checked against the limits (``requests.validate_request``).

        ``max_rows`` replaces the per-request row cap (the batch pipeline checks a whole file).
        """
        from magicapture_pipeline.serving.requests import validate_request

        limits = self._limits
        if max_rows is not None:
            limits = limits.model_copy(update={"max_rows": max(max_rows, 1)})
        return validate_request(
            model_input,
            limits,
            self._sampling,
            fill_tokens=lambda p: fill_tokens(p, self._person, self._style),
            count_tokens=self._count_tokens,
            token_limit=int(self._pipe.tokenizer.model_max_length),
        )

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        """One image per validated row (see the module docstring); refuses before any work.

        (Untyped on purpose: MLflow reads ``predict``'s type hints as a schema; the signature
        logged with the model is the schema.)
        """
        from magicapture_pipeline.core.generation.postprocess import provenance_record
        from magicapture_pipeline.core.generation.sampling import sample_image

        requests = self.validate(model_input)
        sampling = self._sampling
        rows = []
        for request in requests:
            with self._lock:
                image = sample_image(
                    self._pipe,
                    request.prompt,
                    seed=request.seed,
                    num_inference_steps=request.steps,
                    guidance_scale=request.guidance_scale,
                    resolution=sampling.resolution,
                    negative_prompt=sampling.negative_prompt,
                )
            used = {
                "prompt": request.prompt,
                "seed": request.seed,
                "steps": request.steps,
                "guidance_scale": request.guidance_scale,
                "scheduler": sampling.scheduler,
                "lora_scale_unet": sampling.lora_scale_unet,
                "lora_scale_text_encoder": sampling.lora_scale_text_encoder,
                "resolution": sampling.resolution,
            }
            record = provenance_record(
                concept=self._concept_name,
                base_model=self._base_reference,
                prompt=request.prompt,
                seed=request.seed,
                commit=self._commit,
                stage="served",
                settings={**used, "negative_prompt": sampling.negative_prompt},
            )
            rows.append({**used, "image": encode_image(image, record)})
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
