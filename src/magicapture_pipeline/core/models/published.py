"""The published configs' non-size fields, which the tiny random models inherit.

Copied from the model folders on the Hugging Face hub:
``stable-diffusion-v1-5/stable-diffusion-v1-5`` (the paper's base model; the
``runwayml/stable-diffusion-v1-5`` files) and
``stabilityai/stable-diffusion-xl-base-1.0``, each component's ``config.json`` (the scheduler's
``scheduler_config.json``). Sizes (widths, depths, head counts, vocabulary, projection width, block
layout, ``sample_size``) are left out: the tiny models shrink exactly those (``sample_size`` is the
image size the tiny is laid out for, ``TinyModelConfig.sample_size``). Everything else is the
published value, so a quirk of a real config (CLIP's ``eos_token_id: 2``, the scheduler's
``clip_sample: false``, SDXL's ``force_upcast``) is a quirk of the test model too.

A key the published file leaves out takes the library default, as it does on the real model: SD
1.5's VAE has no ``scaling_factor`` / ``force_upcast`` (diffusers' defaults 0.18215 / True).
"""

from __future__ import annotations

from typing import Any

# --- SD 1.5 -------------------------------------------------------------------------------------
SD15_SCHEDULER: dict[str, Any] = {  # scheduler/scheduler_config.json (PNDMScheduler)
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SD15_UNET: dict[str, Any] = {  # unet/config.json, less sizes and block layout
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "out_channels": 4,
}
SD15_VAE: dict[str, Any] = {  # vae/config.json, less sizes
    "act_fn": "silu",
    "in_channels": 3,
    "latent_channels": 4,
    "out_channels": 3,
}
CLIP_L_TEXT: dict[str, Any] = {  # text_encoder/config.json (SD 1.5; SDXL's text_encoder alike)
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "pad_token_id": 1,
}

# --- SDXL base 1.0 ------------------------------------------------------------------------------
SDXL_SCHEDULER: dict[str, Any] = {  # scheduler/scheduler_config.json (EulerDiscreteScheduler)
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
SDXL_UNET: dict[str, Any] = {  # unet/config.json, less sizes and block layout
    **SD15_UNET,
    "addition_embed_type": "text_time",
    "use_linear_projection": True,
    "upcast_attention": None,
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "resnet_time_scale_shift": "default",
    "time_embedding_type": "positional",
}
SDXL_VAE: dict[str, Any] = {  # vae/config.json, less sizes
    **SD15_VAE,
    "force_upcast": True,
    "scaling_factor": 0.13025,
}
SDXL_TEXT: dict[str, Any] = dict(CLIP_L_TEXT)  # text_encoder/config.json
SDXL_TEXT_2: dict[str, Any] = {**CLIP_L_TEXT, "hidden_act": "gelu"}  # text_encoder_2/config.json
