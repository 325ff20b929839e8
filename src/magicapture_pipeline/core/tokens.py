"""Placeholder tokens [V1] (the person) and [V2] (the style) in the CLIP text encoder.

Only the placeholder rows of the token-embedding matrix learn; :class:`FrozenRows` copies every
other row back after each optimiser step, so the rest of the vocabulary stays bit-for-bit unchanged
(weight decay and Adam's momentum would otherwise move them).
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


def add_placeholder_tokens(
    tokenizer: Any,
    text_encoder: Any,
    tokens: Sequence[str],
    init_words: Sequence[str],
) -> list[int]:
    """Add ``tokens`` to the tokenizer, grow the embeddings and initialise each new row.

    Args:
        tokenizer: CLIP tokenizer (modified in place).
        text_encoder: CLIP text encoder (embedding matrix resized in place).
        tokens: placeholder texts, e.g. ``["<v1>", "<v2>"]``.
        init_words: one word per token whose embedding the new row copies (official: "person"
            for [V1]).

    Returns:
        The token ids, in the order of ``tokens``.
    """
    if len(tokens) != len(init_words):
        raise ValueError("one initialiser word per placeholder token")
    inits = [word_embedding(tokenizer, text_encoder, word) for word in init_words]
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
