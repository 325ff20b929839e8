"""Placeholder tokens: added, initialised from words, only their rows move."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from magicapture_pipeline.core.models.offline_tokenizer import build_offline_tokenizer
from magicapture_pipeline.core.models.tokens import (
    FrozenRows,
    PlaceholderRows,
    add_placeholder_tokens,
    embedding_matrix,
    get_placeholder_embeddings,
    placeholder_ids,
    set_placeholder_embeddings,
    word_embedding,
)


@pytest.fixture
def tok_and_encoder():
    torch.manual_seed(0)
    tokenizer = build_offline_tokenizer()
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return tokenizer, CLIPTextModel(config)


def test_add_tokens_initialises_from_words(tok_and_encoder):
    tokenizer, encoder = tok_and_encoder
    before = len(tokenizer)
    person = word_embedding(tokenizer, encoder, "person")
    ids = add_placeholder_tokens(tokenizer, encoder, ["<v1>", "<v2>"], ["person", "painting"])
    assert ids == [before, before + 1] == placeholder_ids(tokenizer, ["<v1>", "<v2>"])
    assert embedding_matrix(encoder).shape[0] == before + 2
    assert tokenizer.tokenize("a photo of a <v1> person")[4] == "<v1>"
    got = get_placeholder_embeddings(tokenizer, encoder, ["<v1>", "<v2>"])
    assert torch.equal(got["<v1>"], person)
    assert torch.equal(got["<v2>"], word_embedding(tokenizer, encoder, "painting"))


def test_multi_token_initialiser_is_the_mean(tok_and_encoder):
    tokenizer, encoder = tok_and_encoder
    ids = tokenizer("xy", add_special_tokens=False).input_ids
    assert len(ids) == 2
    add_placeholder_tokens(tokenizer, encoder, ["<s>"], ["xy"])
    expected = embedding_matrix(encoder).detach()[ids].mean(0)
    assert torch.allclose(get_placeholder_embeddings(tokenizer, encoder, ["<s>"])["<s>"], expected)


@pytest.mark.parametrize(
    ("tokens", "words", "error"),
    [
        (["<v1>"], ["person", "style"], ValueError),  # count mismatch
        (["<|endoftext|>"], ["person"], ValueError),  # already a token
    ],
)
def test_add_tokens_rejects(tok_and_encoder, tokens, words, error):
    tokenizer, encoder = tok_and_encoder
    with pytest.raises(error):
        add_placeholder_tokens(tokenizer, encoder, tokens, words)


def test_set_then_get_round_trip_and_unknown(tok_and_encoder):
    tokenizer, encoder = tok_and_encoder
    add_placeholder_tokens(tokenizer, encoder, ["<v1>", "<v2>"], ["person", "style"])
    values = {"<v1>": torch.arange(16.0), "<v2>": -torch.arange(16.0)}
    set_placeholder_embeddings(tokenizer, encoder, values)
    got = get_placeholder_embeddings(tokenizer, encoder, ["<v1>", "<v2>"])
    assert all(torch.equal(got[k], v) for k, v in values.items())
    with pytest.raises(KeyError):
        placeholder_ids(tokenizer, ["<v9>"])


def test_frozen_rows_keep_everything_but_placeholders(tok_and_encoder):
    tokenizer, encoder = tok_and_encoder
    ids = add_placeholder_tokens(tokenizer, encoder, ["<v1>", "<v2>"], ["person", "style"])
    weight = embedding_matrix(encoder)
    before = weight.detach().clone()
    frozen = FrozenRows(encoder, ids)
    optimizer = torch.optim.AdamW([weight], lr=0.1, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        weight.sum().backward()
        optimizer.step()
        frozen.restore()
    changed = (weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == ids


def test_placeholder_rows_train_only_their_rows(tok_and_encoder):
    tokenizer, encoder = tok_and_encoder
    ids = add_placeholder_tokens(tokenizer, encoder, ["<v1>", "<v2>"], ["person", "style"])
    encoder.requires_grad_(False)
    weight = embedding_matrix(encoder)
    before = weight.detach().clone()
    prompt = tokenizer(["a photo of a <v1> person in <v2>"], return_tensors="pt").input_ids
    reference = encoder(prompt)[0]
    rows = PlaceholderRows(encoder, ids)
    rows.attach()
    assert rows.rows.shape == (2, 16) and not weight.requires_grad
    assert torch.equal(encoder(prompt)[0], reference)  # same values through the hook
    optimizer = torch.optim.AdamW([rows.rows], lr=0.1, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        encoder(prompt)[0].sum().backward()
        optimizer.step()
        rows.sync()
    changed = (weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == ids
    assert torch.equal(weight.detach()[ids], rows.rows.detach())
    hooked = encoder(prompt)[0]
    rows.detach()
    assert not rows.attached
    assert torch.equal(encoder(prompt)[0], hooked)  # the matrix holds the synced rows
    # a second object replaces the first one's hook; reload reads the matrix back
    other = PlaceholderRows(encoder, ids)
    rows.attach()
    other.attach()
    assert other.attached and not rows.attached
    with torch.no_grad():
        other.rows.zero_()
    other.reload()
    assert torch.equal(other.rows.detach(), weight.detach()[ids])
    other.detach()
