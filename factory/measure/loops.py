"""The metrics of one generation of a self-consuming loop, and the summary of a run's generations.

Generation k of a loop run (:mod:`factory.loops.generation`) is a synthetic dataset made by a generator
model folder. :func:`measure_generation` measures it as the evaluate stage measures a synthetic set
(:mod:`factory.measure.evaluation`), plus what the loop papers track from generation to generation:

- quality against real TEST in the reference CNN's penultimate layer (trained on real train only: a space
  no model of the loop took part in), at ONE n with bootstrap intervals (:func:`compare_matched`): FD, KID,
  precision, recall, density, coverage; and the same six for a real-vs-real floor (real val against real
  test at the same n and draws). A metric is ``within_noise`` when its interval overlaps the floor's;
- the recognition rate (the reference CNN's share of samples assigned to their label) and the CAS (a
  classifier trained on the generation alone, top-1 on real test, over training seeds);
- diversity: Gillman et al.'s score (the mean feature distance over n/2 random pairs; their
  ``compute_diversity_score_from_features``), beside real test's, and the share of samples with a near-duplicate
  (phash within ``duplicate_distance`` bits) in the same set, beside real test's. Model collapse shows as
  the first falling and the second rising;
- the denoising loss: the model's noise-prediction MSE on the real test images at fixed timesteps with
  fixed noises (the same for every model), conditioned as in training. It is the analogue of the test loss
  Gerstgrasser et al. track across generations, and it needs no sampling.

:func:`summarise_rows` gathers a run's per-generation rows for the report (first, last, change).
"""

from __future__ import annotations

import hashlib
import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch

from factory.config import ClassifierConfig
from factory.core.errors import FactoryError
from factory.core.shards import Dataset
from factory.core.stats import overlaps
from factory.curate.hashing import hamming_pairs, words_from_hex
from factory.data.pools import dataset_pool
from factory.measure.dataset_eval import dataset_features
from factory.measure.features import ReferenceFeatures
from factory.measure.loop_rows import SUMMARY_METRICS, summarise_rows  # noqa: F401  (re-exported)
from factory.measure.matched import DEFAULT_MAX_N, compare_matched
from factory.measure.metrics import METRIC_NAMES
from factory.measure.recognition import load_reference_classifier
from factory.train.reference import ReferenceCNN

log = logging.getLogger(__name__)


ReferenceModelOrDir = Union[ReferenceCNN, str, Path]


VIEW = "reference_cnn"  # the one feature space of the loop metrics


GENERATION, FLOOR = "generation", "real val (floor)"


DENOISE_BATCH = 256  # images per forward pass of the denoising loss (fixed: the noises are drawn in this order)


PHASH_BITS = 64


@dataclass
class LoopMeasureConfig:
    """How a generation is measured (the loop stage fills it from ``loop.measure``).

    ``n``: samples per side of the matched comparison (None: the smallest of the generation, real val and
    real test, at most ``DEFAULT_MAX_N``); ``draws``, ``bootstrap``, ``k``, ``seed``: as for
    :func:`compare_matched` (``seed`` also seeds the diversity pairs, the denoising noises and the CAS pool);
    ``cas_*``: the CAS classifiers (``cas_seeds``: offsets from ``seed``, as ``classifier.seeds``);
    ``duplicate_distance``: the phash Hamming distance of a near-duplicate; ``denoise_timesteps``: the training
    timesteps of the denoising loss; ``denoise_images``: how many real test images it uses (a seeded subset;
    None: all)."""

    n: int | None = None
    draws: int = 3
    bootstrap: int = 100
    k: int = 5
    seed: int = 0
    cas_steps: int = 100
    cas_seeds: tuple[int, ...] = (0, 1, 2)
    cas_batch_size: int = 64
    cas_lr: float = 0.002
    duplicate_distance: int = 2
    denoise_timesteps: tuple[int, ...] = (50, 250, 500, 750)
    denoise_images: int | None = None


# -- the pieces ---------------------------------------------------------------------------------------


def mean_pairwise_distance(features: np.ndarray, seed: int) -> float | None:
    """Gillman et al.'s diversity score: the mean Euclidean distance between the rows of ``n // 2`` pairs,
    the first and the second index each drawn without replacement (independently, so a pair may be a row
    with itself, as in their ``compute_diversity_score_from_features``), seeded. None with under 2 rows."""
    x = np.asarray(features, dtype=np.float64)
    half = len(x) // 2
    if half == 0:
        return None
    rng = np.random.default_rng([seed, zlib.crc32(b"diversity")])
    first, second = rng.choice(len(x), half, replace=False), rng.choice(len(x), half, replace=False)
    return float(np.linalg.norm(x[first] - x[second], axis=1).mean())


def near_duplicate_rate(dataset: Dataset | str | Path, max_distance: int) -> float:
    """The share of samples of ``dataset`` that have another sample of it within ``max_distance`` bits of
    phash (the write-time ``phash`` of their records; no image is decoded)."""
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    hexes = []
    for rec in ds.records():
        h = rec.get("phash")
        if not isinstance(h, str):
            raise FactoryError(f"{ds.path}: sample {rec.get('key')!r} has no phash in its record")
        hexes.append(h)
    if not hexes:
        raise FactoryError(f"{ds.path}: the dataset is empty")
    pairs = hamming_pairs(words_from_hex(hexes, PHASH_BITS), None, int(max_distance), nbits=PHASH_BITS)
    return len(np.union1d(pairs.i, pairs.j)) / len(hexes)


def _noise_seed(seed: int, t: int) -> int:
    return int(np.random.SeedSequence([seed, t, zlib.crc32(b"denoise")]).generate_state(1)[0])


def _load_generator(model_dir: Path | str):
    """The :class:`ConditionalUNet` of a generator folder (eval mode) and its config."""
    from factory.generate.backends.embedded import MODEL_FOLDER, ConditionalUNet
    from factory.train.loop import seeded

    config = MODEL_FOLDER.read(model_dir)
    axes = list(config["attributes"])
    with seeded(0):  # the random initialisation is overwritten; the caller's global RNG is left alone
        model = ConditionalUNet(config["unet"], len(config["classes"]), [len(config["attributes"][a]) for a in axes])
    MODEL_FOLDER.load_into(model, model_dir)
    return model.eval().requires_grad_(False), config


def _denoise_inputs(real_test: Dataset, config: Mapping[str, Any], images: int | None, seed: int,
                    cache: dict | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real test images as the generator trains on them (its size, mode and attribute vocabulary), with class
    and attribute indices; a seeded subset of ``images`` of them (None: all). Cached per model setting."""
    from factory.train.generator import load_training_data

    size, mode = int(config["image_size"]), "RGB" if int(config["channels"]) == 3 else "L"
    key = ("denoise", real_test.index_sha256, size, mode, repr(config["attributes"]), images, seed)
    if cache is not None and key in cache:
        return cache[key]
    if list(real_test.classes) != list(config["classes"]):
        raise FactoryError(f"{real_test.path}: classes {real_test.classes} differ from the generator's "
                           f"{config['classes']}; the denoising loss conditions on the real test labels")
    data = load_training_data(real_test, size, attributes=config["attributes"], mode=mode)
    x, labels, attrs = data.images, data.labels, data.attrs
    if images is not None:
        if not 0 < images <= len(x):
            raise FactoryError(f"loop.measure.denoise_images={images} must be in 1..{len(x)} (the real test images)")
        rng = np.random.default_rng([seed, zlib.crc32(b"denoise-images")])
        idx = torch.from_numpy(np.sort(rng.choice(len(x), images, replace=False)))
        x, labels, attrs = x[idx], labels[idx], attrs[idx]
    if cache is not None:
        cache[key] = (x, labels, attrs)
    return x, labels, attrs


@torch.inference_mode()
def denoise_loss(model_dir: Path | str, real_test: Dataset | str | Path, timesteps: Sequence[int], *, seed: int = 0,
                 images: int | None = None, cache: dict | None = None) -> dict[str, Any]:
    """The generator's noise-prediction MSE on real test images at each of ``timesteps``: ``x_t`` from the
    training noise schedule (``train_scheduler``) with noises drawn from ``seed`` (one CPU generator per
    timestep, the same for every model of one image shape, so generations compare), the model conditioned
    on each image's class and recorded attributes (null where its vocabulary lacks them), as in training.
    Returns ``{"per_timestep": {str(t): mse}, "mean": mean over timesteps, "images": count}``."""
    from diffusers import DDPMScheduler

    real_test = real_test if isinstance(real_test, Dataset) else Dataset(real_test)
    model, config = _load_generator(model_dir)
    scheduler = DDPMScheduler.from_config(config["train_scheduler"])
    if scheduler.config.prediction_type != "epsilon":
        raise FactoryError(f"{model_dir}: the denoising loss needs a noise-predicting model (prediction_type "
                           f"epsilon); got {scheduler.config.prediction_type!r}")
    total = int(scheduler.config.num_train_timesteps)
    bad = [t for t in timesteps if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < total]
    if bad or not timesteps:
        raise FactoryError(f"loop.measure.denoise_timesteps must be integers in 0..{total - 1} (the model's "
                           f"training timesteps); got {list(timesteps)}")
    x0, labels, attrs = _denoise_inputs(real_test, config, images, seed, cache)
    per_t: dict[str, float] = {}
    for t in timesteps:
        gen = torch.Generator().manual_seed(_noise_seed(seed, t))
        sq, count = 0.0, 0
        for i in range(0, len(x0), DENOISE_BATCH):
            xb = x0[i:i + DENOISE_BATCH]
            noise = torch.randn(xb.shape, generator=gen)
            tt = torch.full((len(xb),), t, dtype=torch.long)
            pred = model(scheduler.add_noise(xb, noise, tt), tt,
                         model.embed(labels[i:i + DENOISE_BATCH], attrs[i:i + DENOISE_BATCH]))
            sq += float(((pred - noise) ** 2).double().sum())
            count += noise.numel()
        per_t[str(t)] = sq / count
    return {"per_timestep": per_t, "mean": float(np.mean(list(per_t.values()))), "images": len(x0)}


def _reference(reference: ReferenceModelOrDir) -> tuple[ReferenceCNN, dict[str, Any] | None]:
    if isinstance(reference, ReferenceCNN):
        return reference.eval(), None
    model, info = load_reference_classifier(reference)
    return model, {"path": str(reference), **{k: info[k] for k in ("images", "epochs", "test_accuracy") if k in info}}


def _fingerprint(model: torch.nn.Module) -> str:
    """A hash of a model's weights: which cached features belong to which reference CNN."""
    h = hashlib.sha256()
    for name, v in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _real_side(test: Dataset, val: Dataset, extractor: ReferenceFeatures, cfg: LoopMeasureConfig,
               cache: dict | None) -> dict[str, Any]:
    """Features of real test and real val, real test's diversity and near-duplicate rate (cached)."""
    key = ("real", _fingerprint(extractor.model), test.index_sha256, val.index_sha256, cfg.seed,
           cfg.duplicate_distance)
    if cache is not None and key in cache:
        return cache[key]
    test_f = dataset_features(test, {VIEW: extractor}).features[VIEW]
    side = {"test": test_f, "val": dataset_features(val, {VIEW: extractor}).features[VIEW],
            "diversity": mean_pairwise_distance(test_f, cfg.seed),
            "near_duplicates": near_duplicate_rate(test, cfg.duplicate_distance), "floors": {}}
    if cache is not None:
        cache[key] = side
    return side


def _matched_n(sizes: Mapping[str, int], cfg: LoopMeasureConfig) -> int:
    """The common sample count (as :func:`factory.measure.matched.matched_size`, in loop.measure's words)."""
    n = cfg.n if cfg.n is not None else min(min(sizes.values()), DEFAULT_MAX_N)
    short = {name: size for name, size in sizes.items() if size < n}
    if short:
        held = ", ".join(f"{name} ({size} samples)" for name, size in short.items())
        raise FactoryError(f"loop.measure.n={n} is more than {held} hold: the generation, the floor and real test "
                           "are compared at the same n")
    if n <= cfg.k:
        raise FactoryError(f"loop.measure.n={n} must be more than k={cfg.k} (PRDC's neighbours; the smallest set "
                           "decides the default n)")
    return int(n)


def _metrics(row: Mapping[str, Any]) -> dict[str, Any]:
    return {**{m: row[m] for m in METRIC_NAMES}, **{f"{m}_ci95": row[f"{m}_ci95"] for m in METRIC_NAMES},
            "per_draw": row["per_draw"]}


def _cas(dataset: Dataset, real_test: Dataset, cfg: LoopMeasureConfig) -> dict[str, Any]:
    """The Classification Accuracy Score: classifiers trained on ``dataset`` alone, top-1 on real test."""
    from factory.train.classifier import train_classifier_seeds

    pool = dataset_pool(dataset.path, f"cas-{dataset.path.name}", cfg.seed)
    ccfg = ClassifierConfig(steps=cfg.cas_steps, batch_size=cfg.cas_batch_size, lr=cfg.cas_lr, seed=cfg.seed,
                            seeds=tuple(cfg.cas_seeds), eval_every=cfg.cas_steps)
    cas = train_classifier_seeds(pool, real_test, ccfg)
    return {"cas": cas["top1_mean"], "cas_ci95": cas["top1_ci95"], "cas_per_seed": cas["top1_per_seed"],
            "cas_seeds": cas["seeds"]}


# -- one generation ------------------------------------------------------------------------------------


def measure_generation(dataset: Dataset | str | Path, model_dir: Path | str, *, reference: ReferenceModelOrDir,
                       real_test: Dataset | str | Path, real_val: Dataset | str | Path, cfg: LoopMeasureConfig,
                       floor_cache: dict | None = None) -> dict[str, Any]:
    """The metrics of one generation: its synthetic ``dataset``, made by the generator folder ``model_dir``,
    against ``real_test``, beside the floor ``real_val`` (see the module docstring). ``reference``: the
    reference CNN (a model, or its folder as :func:`save_reference_classifier` writes it).

    ``floor_cache``: a dict the caller keeps between calls in one process (its contents are this module's):
    real test's and real val's features, the floor's metrics and the denoising inputs are computed once.

    Returns a JSON-ready dict: ``samples``, ``n``, ``draws``, ``bootstrap``, ``k``; the six metrics with
    ``<m>_ci95``, ``per_draw`` and ``within_noise`` {metric: bool}; ``floor`` (the same for real val, and its
    ``samples``); ``recognition``, ``recognition_per_class``; ``cas``, ``cas_ci95``, ``cas_per_seed``,
    ``cas_seeds``; ``diversity`` {``mean_pairwise_distance``, ``real_mean_pairwise_distance``,
    ``near_duplicate_rate``, ``real_near_duplicate_rate``, ``duplicate_distance``}; ``denoise_loss``
    {``per_timestep``, ``mean``, ``images``}; ``encoder``; ``seconds``."""
    start = time.perf_counter()
    ds, test, val = (d if isinstance(d, Dataset) else Dataset(d) for d in (dataset, real_test, real_val))
    if val.path.resolve() == test.path.resolve() or val.index_sha256 == test.index_sha256:
        raise FactoryError(f"{val.path}: the floor is real test itself; it must be real data disjoint from it "
                           "(real val)")
    # 1. the common n first: a bad n fails before any work
    n = _matched_n({f"the generation {ds.path}": len(ds), f"real val {val.path}": len(val),
                    f"real test {test.path}": len(test)}, cfg)
    model, trained_on = _reference(reference)
    extractor = ReferenceFeatures(model, trained_on=trained_on)
    # 2. features: the generation's (with recognition), real test's and real val's (cached)
    gen = dataset_features(ds, {VIEW: extractor}, classifier=model)
    real = _real_side(test, val, extractor, cfg, floor_cache)
    # 3. the generation and the floor against real test at n (the floor's numbers do not depend on the
    #    generation: compare_matched draws each set's rows by its name only, so they are cached per setting)
    settings = dict(n=n, draws=cfg.draws, bootstrap=cfg.bootstrap, k=cfg.k, seed=cfg.seed)
    fkey = tuple(settings.values())
    if fkey not in real["floors"]:
        real["floors"][fkey] = compare_matched(real["test"], {FLOOR: real["val"]}, **settings)[FLOOR]
    floor = real["floors"][fkey]
    row = compare_matched(real["test"], {GENERATION: gen.features[VIEW]}, **settings)[GENERATION]
    rec = gen.recognition or {}
    out: dict[str, Any] = {
        "samples": len(gen), "n": n, "draws": cfg.draws, "bootstrap": cfg.bootstrap, "k": cfg.k,
        **_metrics(row),
        "within_noise": {m: overlaps(row[f"{m}_ci95"], floor[f"{m}_ci95"]) for m in METRIC_NAMES},
        "floor": {"label": FLOOR, "samples": len(val), **_metrics(floor)},
        "recognition": rec.get("overall"), "recognition_per_class": rec.get("per_class"),
    }
    # 4. CAS, diversity, the denoising loss
    out.update(_cas(ds, test, cfg))
    out["diversity"] = {"mean_pairwise_distance": mean_pairwise_distance(gen.features[VIEW], cfg.seed),
                        "real_mean_pairwise_distance": real["diversity"],
                        "near_duplicate_rate": near_duplicate_rate(ds, cfg.duplicate_distance),
                        "real_near_duplicate_rate": real["near_duplicates"],
                        "duplicate_distance": cfg.duplicate_distance}
    out["denoise_loss"] = denoise_loss(model_dir, test, tuple(cfg.denoise_timesteps), seed=cfg.seed,
                                       images=cfg.denoise_images, cache=floor_cache)
    out["encoder"] = extractor.describe()
    out["seconds"] = round(time.perf_counter() - start, 1)
    log.info("loop metrics of %s at n=%d: fd %.3f, recognition %s, cas %.3f, diversity %s, denoise loss %.4f",
             ds.path, n, out["fd"], out["recognition"], out["cas"], out["diversity"]["mean_pairwise_distance"],
             out["denoise_loss"]["mean"])
    return out
