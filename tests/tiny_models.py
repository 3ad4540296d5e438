"""The configs of the tiny models that the shared fixtures in ``conftest.py`` train once per session
(``generator_dir``, ``clip_dir``), for the tests that retrain them to compare bytes."""

from factory.config import ClipTrainConfig, EmbeddedTrainConfig

# A tiny 2-level UNet at 8x8: a few seconds to train on 2 cores, fast to sample.
TINY_GENERATOR = EmbeddedTrainConfig(image_size=8, block_out_channels=(8, 16), norm_num_groups=4, steps=15,
                                     batch_size=32, warmup_steps=2)

# A small CLIP that learns the digits well enough to catch wrong labels (150 steps: about 20 s on 2 cores).
SMALL_CLIP = ClipTrainConfig(vision_width=64, vision_layers=2, vision_head_width=32, embed_dim=32, text_width=64,
                             text_layers=1, text_heads=2, steps=150, batch_size=128)
