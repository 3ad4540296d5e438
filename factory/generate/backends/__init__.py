"""Image generators: one interface (:class:`~factory.generate.backends.base.Generator`), two backends.

- ``embedded``: a small class- and attribute-conditional diffusion model trained by the pipeline (CPU).
- ``diffusers``: any diffusers text-to-image pipeline from a local folder or the HF cache (GPU).
"""
