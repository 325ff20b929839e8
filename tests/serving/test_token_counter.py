"""Validation counts tokens beside generation without disturbing it (a scoring-server race).

A full suite's concurrent scoring-server test once answered 400: "Sizes of tensors must match ...
Expected size 2 but got size 77" in the SD pipeline's ``torch.cat([negative_prompt_embeds,
prompt_embeds])``. Hugging Face tokenizers set truncation and padding on the object at every
call; request validation counted tokens on the pipeline's own tokenizer (no padding) outside the
generation lock, so a negative prompt tokenized meanwhile could lose its padding to 77.
"""

from __future__ import annotations

import sys
import threading

from transformers import AutoTokenizer

from magicapture_pipeline.serving.concept_model import token_counter

ENCODES = 3000


def padding_lost(tokenizer, count) -> int:
    """Pad ``""`` to the model length ENCODES times while ``count`` runs in another thread, with
    the interpreter switching threads as often as it can; how many came back unpadded."""
    stop, lost = threading.Event(), []

    def counting() -> None:
        while not stop.is_set():
            count("a photo of a <v1> person")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=counting)
    thread.start()
    try:
        for _ in range(ENCODES):
            ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids  # fmt: skip
            lost += [ids.shape[-1]] if ids.shape[-1] != tokenizer.model_max_length else []
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    return len(lost)


def test_counting_on_the_pipeline_s_own_tokenizer_is_the_race(tiny_sd):
    """The hazard is real here (so the next test can fail): counting on the shared tokenizer
    strips the padding of some negative prompts encoded meanwhile."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_sd(), subfolder="tokenizer")
    shared = lambda prompt: len(tokenizer(prompt, truncation=False).input_ids)  # noqa: E731
    assert padding_lost(tokenizer, shared) > 0


def test_validation_s_token_counter_leaves_generation_s_tokenizer_alone(tiny_sd):
    tokenizer = AutoTokenizer.from_pretrained(tiny_sd(), subfolder="tokenizer")
    count = token_counter(tokenizer)
    assert count("a photo of a person") == len(tokenizer("a photo of a person").input_ids)
    assert padding_lost(tokenizer, count) == 0
