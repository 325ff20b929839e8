"""Placeholder tokens [V1] (the person) and [V2] (the style) in the CLIP text encoder.

Only the placeholder rows of the token-embedding matrix learn. The trainers keep them in a small
:class:`PlaceholderRows` parameter (K x hidden) that a forward hook splices into the embedding
lookup, so AdamW (weight decay included) and gradient clipping only ever see those K rows and the
rest of the vocabulary is never touched; the rows are written back into the matrix after each
optimiser step (:meth:`PlaceholderRows.sync`). :class:`FrozenRows` is the older alternative
(optimise the whole matrix, then copy every other row back).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def embedding_matrix(text_encoder: Any) -> torch.nn.Parameter:
    """The text encoder's token-embedding weight (vocab x hidden)."""
    return text_encoder.get_input_embeddings().weight


def word_embedding(tokenizer: Any, text_encoder: Any, word: str) -> torch.Tensor:
    """The embedding of ``word``: its row, or the mean of its rows when it splits into several."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"initialiser word {word!r} tokenizes to nothing")
    return embedding_matrix(text_encoder).detach()[ids].mean(dim=0)


RANDOM_INIT = "random"


def add_placeholder_tokens(
    tokenizer: Any,
    text_encoder: Any,
    tokens: Sequence[str],
    init_words: Sequence[str],
    random_std: float = 0.017,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Add ``tokens`` to the tokenizer, grow the embeddings and initialise each new row.

    Args:
        tokenizer: CLIP tokenizer (modified in place).
        text_encoder: CLIP text encoder (embedding matrix resized in place).
        tokens: placeholder texts, e.g. ``["<v1>", "<v2>"]``.
        init_words: one word per token whose embedding the new row copies (official: "person"
            for [V1]), or ``"random"``: a draw from ``N(0, random_std^2)`` (the authors'
            ``<rand-0.017>``, their [V2] initialisation).
        random_std: std of a ``"random"`` row.
        generator: CPU generator of the random draws (seeded: the same row every run).

    Returns:
        The token ids, in the order of ``tokens``.
    """
    if len(tokens) != len(init_words):
        raise ValueError("one initialiser word per placeholder token")
    hidden = embedding_matrix(text_encoder).shape[1]
    inits = [
        torch.randn(hidden, generator=generator) * random_std
        if word == RANDOM_INIT
        else word_embedding(tokenizer, text_encoder, word)
        for word in init_words
    ]
    vocab = tokenizer.get_vocab()
    clashes = [token for token in tokens if token in vocab]
    if clashes or len(set(tokens)) != len(tokens):
        raise ValueError(f"placeholder tokens {list(tokens)} clash with the vocabulary: {clashes}")
    tokenizer.add_tokens(list(tokens))
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    with torch.no_grad():
        weight = embedding_matrix(text_encoder)
        for token_id, init in zip(ids, inits, strict=True):
            weight[token_id] = init.to(weight.dtype)
    return list(ids)


def placeholder_ids(tokenizer: Any, tokens: Sequence[str]) -> list[int]:
    """Ids of tokens already in the tokenizer; raises if one is missing."""
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    unknown = tokenizer.convert_tokens_to_ids(tokenizer.unk_token)
    missing = [t for t, i in zip(tokens, ids, strict=True) if i is None or i == unknown]
    if missing:
        raise KeyError(f"tokens not in the tokenizer: {missing}")
    return list(ids)


def get_placeholder_embeddings(
    tokenizer: Any, text_encoder: Any, tokens: Sequence[str]
) -> dict[str, torch.Tensor]:
    """``{token: embedding row}`` (detached float32 CPU copies)."""
    weight = embedding_matrix(text_encoder).detach()
    return {
        token: weight[token_id].to("cpu", torch.float32).clone()
        for token, token_id in zip(tokens, placeholder_ids(tokenizer, tokens), strict=True)
    }


def set_placeholder_embeddings(
    tokenizer: Any, text_encoder: Any, embeddings: Mapping[str, torch.Tensor]
) -> None:
    """Write ``{token: embedding}`` into the rows of tokens already added."""
    weight = embedding_matrix(text_encoder)
    ids = placeholder_ids(tokenizer, list(embeddings))
    with torch.no_grad():
        for token_id, value in zip(ids, embeddings.values(), strict=True):
            weight[token_id] = value.to(weight.device, weight.dtype).reshape(-1)


class FrozenRows:
    """Keeps every embedding row except ``trainable_ids`` exactly at its value at creation.

    Call :meth:`restore` after each ``optimizer.step()``.
    """

    def __init__(self, text_encoder: Any, trainable_ids: Sequence[int]) -> None:
        self.weight = embedding_matrix(text_encoder)
        self.original = self.weight.detach().clone()
        self.frozen = torch.ones(self.weight.shape[0], dtype=torch.bool, device=self.weight.device)
        self.frozen[list(trainable_ids)] = False

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the frozen rows back from the saved copy."""
        self.weight[self.frozen] = self.original[self.frozen]


class PlaceholderRows(torch.nn.Module):
    """The trainable rows of the placeholder tokens, spliced into the token-embedding output.

    ``rows`` (K x hidden, float32) is the only embedding tensor that requires grad. While attached,
    a forward hook on the text encoder's input-embedding module replaces the looked-up vectors of
    the placeholder ids by ``rows`` (``torch.where`` on the id mask), so every forward reads the
    current rows and gradients reach only them; the embedding matrix itself stays frozen. Call
    :meth:`sync` after each optimiser step so that everything reading the matrix (export, saved
    checkpoints, a detached encoder) sees the same values.

    Args:
        text_encoder: CLIP text encoder whose placeholder rows already hold their start values.
        token_ids: the placeholder ids, in the order of ``rows``.
    """

    _HANDLE = "_placeholder_rows_hook"

    def __init__(self, text_encoder: Any, token_ids: Sequence[int]) -> None:
        super().__init__()
        self.module = [text_encoder.get_input_embeddings()]  # a list: not a registered submodule
        weight = self.module[0].weight
        self.token_ids = list(token_ids)
        self.rows = torch.nn.Parameter(weight.detach()[self.token_ids].float().clone())
        slots = torch.full((weight.shape[0],), -1, dtype=torch.long, device=weight.device)
        slots[self.token_ids] = torch.arange(len(self.token_ids), device=weight.device)
        self.slots = slots

    @property
    def attached(self) -> bool:
        """Whether this object's hook is the one on the embedding module."""
        handle = getattr(self.module[0], self._HANDLE, None)
        return handle is not None and handle[1] is self

    def attach(self) -> None:
        """Install the hook (replacing one another :class:`PlaceholderRows` left there)."""
        if self.attached:
            return
        self.detach_any(self.module[0])
        handle = self.module[0].register_forward_hook(self._splice)
        setattr(self.module[0], self._HANDLE, (handle, self))

    @classmethod
    def detach_any(cls, module: Any) -> None:
        """Remove whatever :class:`PlaceholderRows` hook ``module`` carries."""
        found = getattr(module, cls._HANDLE, None)
        if found is not None:
            found[0].remove()
            delattr(module, cls._HANDLE)

    def detach(self) -> None:
        """Remove the hook (the matrix keeps the values of the last :meth:`sync`)."""
        if self.attached:
            self.detach_any(self.module[0])

    def _splice(self, module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor:
        input_ids = args[0] if args else None
        if input_ids is None:
            return output
        slot = self.slots.to(input_ids.device)[input_ids]
        picked = self.rows.to(output.device, output.dtype)[slot.clamp_min(0)]
        return torch.where((slot >= 0).unsqueeze(-1), picked, output)

    @torch.no_grad()
    def sync(self) -> None:
        """Write ``rows`` into the embedding matrix."""
        weight = self.module[0].weight
        weight[self.token_ids] = self.rows.detach().to(weight.device, weight.dtype)

    @torch.no_grad()
    def reload(self) -> None:
        """Read ``rows`` back from the embedding matrix (after a checkpoint restored it)."""
        self.rows.copy_(self.module[0].weight.detach()[self.token_ids].float())
