"""The offline CLIP tokenizer: a BPE tokenizer built in code, without any download.

The tiny random models (:mod:`.builders`) and the speed benchmark's random-weight models use it;
the prompt templates' words become single tokens, so a tiny model sees real words, not bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
WORD_END = "</w>"
MAX_LENGTH = 77  # CLIP's context length, the same as SD 1.5's tokenizer

# Words of the prompt templates (stage one, stage two, generation) and their initialisers: each
# becomes a single token in the offline vocabulary, so a tiny model sees real words, not bytes.
DEFAULT_WORDS: tuple[str, ...] = (
    "a", "an", "the", "photo", "of", "person", "in", "style", "painting", "portrait", "man",
    "woman", "face", "art", "artwork", "picture", "image", "drawing", "sketch", "and", "with",
    "by", "wearing", "close", "up", "high", "quality", "detailed", "background", "color",
)  # fmt: skip


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges (lowest rank first) to ``symbols``, as the tokenizer will."""
    while len(symbols) > 1:
        pairs = [
            (ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:]))
        ]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :]]
    return symbols


def _word_merges(word: str, ranks: dict[tuple[str, str], int]) -> list[tuple[str, str]]:
    """New merges (ranked after ``ranks``) that finish turning ``word</w>`` into one symbol.

    The word is first segmented with the existing merges, then its pieces are joined left to
    right; since every new merge ranks after the old ones, earlier words still tokenize whole.
    """
    symbols = _bpe([*word[:-1], word[-1] + WORD_END], ranks)
    merges = []
    while len(symbols) > 1:
        merges.append((symbols[0], symbols[1]))
        symbols = [symbols[0] + symbols[1], *symbols[2:]]
    return merges


def build_offline_tokenizer(extra_words: Iterable[str] = (), pad_token: str = EOS_TOKEN) -> Any:
    """Build a CLIP BPE tokenizer in code, without any download.

    The vocabulary holds the 256 byte-level characters, the same with ``</w>``, one merge chain per
    word (``DEFAULT_WORDS`` + ``extra_words``, lower-cased, letters only) and the two special
    tokens, in the order SD's tokenizer uses (specials last). Any text still tokenizes: unknown
    words fall back to byte-level symbols.

    Args:
        extra_words: further words that should become single tokens.
        pad_token: the padding token (SD and SDXL's first tokenizer: ``<|endoftext|>``; SDXL's
            second tokenizer: ``!``, a byte-level symbol already in the vocabulary).

    Returns:
        A ``transformers.CLIPTokenizer`` with ``model_max_length`` 77.
    """
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for symbol in chars + [c + WORD_END for c in chars]:
        vocab.setdefault(symbol, len(vocab))
    ranks: dict[tuple[str, str], int] = {}
    words = dict.fromkeys(w.lower() for w in (*DEFAULT_WORDS, *extra_words))
    for word in words:
        if not word.isalpha() or not word.isascii():
            raise ValueError(f"offline tokenizer words must be ASCII letters, got {word!r}")
        for left, right in _word_merges(word, ranks):
            ranks[(left, right)] = len(ranks)
            vocab.setdefault(left + right, len(vocab))
    for special in (BOS_TOKEN, EOS_TOKEN):
        vocab.setdefault(special, len(vocab))
    return CLIPTokenizer(
        vocab=vocab,
        merges=list(ranks),
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=pad_token,
        model_max_length=MAX_LENGTH,
    )
