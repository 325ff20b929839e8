"""The base-model family adapter: what the trainers ask of SD 1.x and of SDXL, in one interface.

The method (three tasks, masked losses, Eq. 7, Eq. 8) is the same on both families; only three
things differ, and they live here so the trainers call one interface instead of forking:

* **token tables**: SD 1.x has one tokenizer / text encoder pair, SDXL two (CLIP ViT-L, 768-d, and
  OpenCLIP ViT-bigG, 1280-d). [V1] and [V2] get a row in every table
  (:meth:`FamilyAdapter.add_placeholder_tokens`), and each table trains only those rows.
* **prompt encoding**: SD 1.x uses the encoder's last hidden states; SDXL concatenates both
  encoders' penultimate hidden states and adds the pooled embedding (``core.sdxl``).
* **the UNet call**: SDXL's UNet also takes ``added_cond_kwargs`` (pooled embedding + time ids,
  built from the latent size, so training uses the sampling-time defaults).

Token positions for Eq. 8 come from the first tokenizer's ids; both SDXL tokenizers share the
vocabulary and merges, so a placeholder sits at the same position in both sequences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from magicapture_pipeline.core.models import sdxl
from magicapture_pipeline.core.models.loading import (
    SD15,
    SDXL,
    SDComponents,
    token_ids,
    upsampling_factor,
)
from magicapture_pipeline.core.models.tokens import (
    PlaceholderRows,
    add_placeholder_tokens,
    get_placeholder_embeddings,
    placeholder_ids,
    set_placeholder_embeddings,
)

# One embedding per token for SD 1.x; for SDXL one row per table, keyed like the SDXL
# pivotal-tuning examples' embedding files.
Embeddings = Mapping[str, Tensor | Mapping[str, Tensor]]


@dataclass
class Conditioning:
    """One encoded prompt batch.

    Attributes:
        ids: the first tokenizer's ids ``(B, 77)``: where the placeholders sit (Eq. 8).
        hidden: the UNet's ``encoder_hidden_states``.
        pooled: SDXL's pooled text embedding ``(B, d)``; ``None`` for SD 1.x.
    """

    ids: Tensor
    hidden: Tensor
    pooled: Tensor | None = None


class TableRows:
    """The :class:`PlaceholderRows` of every token table, attached / synced / reloaded together.

    Args:
        tables: one per table, in table order (``FamilyAdapter.placeholder_rows``).
    """

    def __init__(self, tables: Sequence[PlaceholderRows]) -> None:
        self.tables = list(tables)

    def params(self) -> list[torch.nn.Parameter]:
        """The trainable rows, one ``(K, width)`` parameter per table."""
        return [table.rows for table in self.tables]

    def attach(self) -> None:
        """Install every table's hook."""
        for table in self.tables:
            table.attach()

    def detach(self) -> None:
        """Remove every table's hook."""
        for table in self.tables:
            table.detach()

    def sync(self) -> None:
        """Write the rows into their embedding matrices (after each optimiser step)."""
        for table in self.tables:
            table.sync()

    def reload(self) -> None:
        """Read the rows back from the matrices (after a checkpoint restored them)."""
        for table in self.tables:
            table.reload()


class FamilyAdapter:
    """The family-specific half of training and generation for one loaded base model.

    Args:
        components: the loaded base model (``core.models.load_components``).
    """

    def __init__(self, components: SDComponents) -> None:
        self.components = components
        self.family = components.family
        if self.family not in (SD15, SDXL):
            raise ValueError(f"unknown model family {self.family!r}")
        self.latent_factor = upsampling_factor(components.vae)

    # token tables -------------------------------------------------------------------------
    @property
    def tables(self) -> list[tuple[str, Any, Any]]:
        """``[(name, tokenizer, text encoder)]``: ``clip_l`` (and ``clip_g`` for SDXL)."""
        return self.components.text_pairs()

    @property
    def text_encoders(self) -> list[Any]:
        """Every text encoder, in table order."""
        return [encoder for _, _, encoder in self.tables]

    def add_placeholder_tokens(
        self, tokens: Sequence[str], init_words: Sequence[str], **init: Any
    ) -> dict[str, list[int]]:
        """Add the tokens to every tokenizer that lacks them (rows initialised from each table's
        own embedding of ``init_words``, or at random: ``init`` goes to
        :func:`core.tokens.add_placeholder_tokens`); return ``{table: ids}``."""
        ids = {}
        for name, tokenizer, encoder in self.tables:
            if not all(token in tokenizer.get_vocab() for token in tokens):
                add_placeholder_tokens(tokenizer, encoder, tokens, init_words, **init)
            ids[name] = placeholder_ids(tokenizer, tokens)
        return ids

    def placeholder_rows(self, tokens: Sequence[str]) -> list[PlaceholderRows]:
        """One :class:`PlaceholderRows` per table (attached): the only embedding parameters."""
        rows = []
        for _, tokenizer, encoder in self.tables:
            encoder.get_input_embeddings().weight.requires_grad_(False)
            row = PlaceholderRows(encoder, placeholder_ids(tokenizer, tokens))
            row.attach()
            rows.append(row)
        return rows

    def get_embeddings(self, tokens: Sequence[str]) -> dict[str, Any]:
        """SD 1.x: ``{token: row}``; SDXL: ``{token: {"clip_l": row, "clip_g": row}}``."""
        per_table = {
            name: get_placeholder_embeddings(tokenizer, encoder, tokens)
            for name, tokenizer, encoder in self.tables
        }
        if self.family == SD15:
            return per_table["clip_l"]
        return {token: {name: rows[token] for name, rows in per_table.items()} for token in tokens}

    def set_embeddings(self, embeddings: Embeddings) -> None:
        """Write embeddings in the layout :meth:`get_embeddings` returns (tokens already added).

        Raises:
            ValueError: when the layout does not fit this family (an SD 1.x embedding on SDXL,
                or the reverse), naming the token.
        """
        for name, tokenizer, encoder in self.tables:
            rows = {}
            for token, value in embeddings.items():
                nested = isinstance(value, Mapping)
                if nested != (self.family == SDXL):
                    raise ValueError(
                        f"embedding of {token!r} is {'per table' if nested else 'one row'}, but "
                        f"the base model is {self.family} ({len(self.tables)} token table(s))"
                    )
                rows[token] = value[name] if nested else value
            set_placeholder_embeddings(tokenizer, encoder, rows)

    # conditioning and the UNet ------------------------------------------------------------
    def encode(self, prompts: Sequence[str], device: str | torch.device) -> Conditioning:
        """Encode ``prompts`` the way this family's pipeline does at sampling time."""
        if self.family == SD15:
            tokenizer, encoder = self.components.tokenizer, self.components.text_encoder
            ids = token_ids(tokenizer, prompts).to(device)
            return Conditioning(ids, encoder(ids)[0])
        tokenizers = [tokenizer for _, tokenizer, _ in self.tables]
        ids, hidden, pooled = sdxl.encode_prompts(tokenizers, self.text_encoders, prompts, device)
        return Conditioning(ids, hidden, pooled)

    def unet_kwargs(self, sample: Tensor, cond: Conditioning) -> dict[str, Any]:
        """Extra UNet keyword arguments: SDXL's ``added_cond_kwargs`` for ``sample``'s size."""
        if cond.pooled is None:
            return {}
        height, width = (int(side) * self.latent_factor for side in sample.shape[-2:])
        pooled = cond.pooled.to(sample.device)
        return {"added_cond_kwargs": sdxl.added_conditions(pooled, height, width, sample.shape[0])}

    def predict(self, unet: Any, sample: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
        """``unet(sample, timesteps, hidden, **family kwargs).sample``."""
        return unet(sample, timesteps, cond.hidden, **self.unet_kwargs(sample, cond)).sample


TABLE_SEPARATOR = "/"


def embeddings_to_tensors(embeddings: Embeddings) -> dict[str, Tensor]:
    """Stage one's embeddings as one flat ``{name: tensor}`` (a safetensors file): SD 1.x keys
    are the tokens; SDXL keys are ``<table>/<token>`` (``clip_l/<v1>``, ``clip_g/<v1>``, ...)."""
    flat: dict[str, Tensor] = {}
    for token, value in embeddings.items():
        if isinstance(value, Mapping):
            flat.update({f"{name}{TABLE_SEPARATOR}{token}": row for name, row in value.items()})
        else:
            flat[token] = value
    return flat


def embeddings_from_tensors(tensors: Mapping[str, Tensor]) -> dict[str, Any]:
    """The inverse of :func:`embeddings_to_tensors` (token order kept)."""
    tables = ("clip_l", "clip_g")
    nested = [key.partition(TABLE_SEPARATOR) for key in tensors]
    if not any(table in tables and sep for table, sep, _ in nested):
        return dict(tensors)
    out: dict[str, dict[str, Tensor]] = {}
    for (table, sep, token), value in zip(nested, tensors.values(), strict=True):
        if table not in tables or not sep:
            key = f"{table}{sep}{token}"
            raise ValueError(f"embedding key {key!r}: expected '<clip_l|clip_g>/<token>'")
        out.setdefault(token, {})[table] = value
    return out
