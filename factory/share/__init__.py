"""Sharing datasets: the Hugging Face export (Parquet shards, dataset card, Croissant metadata).

- :mod:`factory.share.columns`: the export's one schema (an ``Image``, a ``ClassLabel``, flat provenance
  columns and the whole record as JSON), shared by real and synthetic samples so that a pool exports too;
- :mod:`factory.share.hf_export`: ``export_hf``, the folder ``datasets.load_dataset`` reads;
- :mod:`factory.share.card`: the dataset card (``README.md``) built from the data;
- :mod:`factory.share.croissant`: ``croissant.json`` (MLCommons Croissant 1.0 with the RAI fields).

Pulling an export back is ``factory ingest hf:...`` (:func:`factory.data.hf.hf_source`).
"""
