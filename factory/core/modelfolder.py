"""Model folders: one format and one code path for every model the factory trains and loads.

A model folder holds

- the weights: one safetensors file, with at most one metadata key (safetensors writes metadata from a
  hash map, so with several keys their order, and with it the file's bytes and ``weights_sha256``, would
  change from run to run);
- the config: a JSON object with a ``schema`` field and everything needed to rebuild the model; its
  presence marks the folder as one of its kind;
- optional further files a kind needs (e.g. the embedded scorer's vocabulary and architecture), written
  as the caller serialises them.

Each kind is a :class:`ModelFolder`: its file names and the layout of its config JSON (indent, sorted
keys) are parameters, so every kind keeps the exact bytes it has always written. A folder is assembled in
a hidden staging folder next to its destination (:func:`~factory.core.files.staging_dir`) and moved into
place whole (:func:`~factory.core.files.replace_dir`): a crash at any moment leaves the previous folder.
A destination that exists, is not empty and is not a complete folder of the kind (its config parses with
the kind's schema, its files are there, nothing else is) is never replaced, nor one that overlaps an input
of the training; the writer holds the folder's lock (:mod:`factory.core.outputs`) from check to move. Loading
checks the folder, its files and the config's schema and fields, and raises :class:`FactoryError` with
one line naming the file at fault.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from factory.core.errors import FactoryError
from factory.core.files import atomic_write_bytes, read_json, writing
from factory.core.outputs import OutputDir, PathLike, claim_output_dir

if TYPE_CHECKING:
    import torch


def json_bytes(obj: Any, *, indent: int | None = 2, sort_keys: bool = True) -> bytes:
    """The bytes of a model folder's JSON file: ``json.dumps`` with ``indent``/``sort_keys``, and a newline."""
    return json.dumps(obj, indent=indent, sort_keys=sort_keys).encode() + b"\n"


class TrainedModel:
    """What a loaded model's config says about its training data: the classes (index = label), the
    attribute values per axis, and the datasets it was trained on (``parents``). A class mixing it in
    returns its loaded config from :meth:`_model_config`."""

    def _model_config(self) -> Mapping[str, Any]:
        raise NotImplementedError

    @property
    def classes(self) -> list[str]:
        return list(self._model_config()["classes"])

    @property
    def attributes(self) -> dict[str, list[str]]:
        """The attribute values seen in training, per axis."""
        return {k: list(v) for k, v in self._model_config()["attributes"].items()}

    @property
    def parents(self) -> list[dict[str, Any]]:
        return [dict(p) for p in self._model_config().get("parents", [])]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


@dataclass(frozen=True)
class ModelFolder:
    """One kind of model folder: its file names, schema and JSON layout.

    ``kind`` names it in messages ("embedded generator"); ``short`` (default: ``kind``) is the word of
    the refusal and "no such folder" messages ("generator"); ``hint`` is added when the folder does not
    exist ("train it first: train_generator"). ``files`` are the other files a complete folder holds;
    ``keys`` the fields its config must have; ``metadata`` the safetensors metadata (None: none).
    """

    kind: str
    schema: str
    weights: str
    config: str
    files: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    metadata: Mapping[str, str] | None = None
    indent: int | None = 2
    sort_keys: bool = True
    short: str = ""
    hint: str = ""

    def __post_init__(self) -> None:
        if self.metadata is not None and len(self.metadata) > 1:
            raise ValueError(f"{self.kind}: at most one safetensors metadata key (bytes must not depend on "
                             f"hash order); got {sorted(self.metadata)}")

    # -- saving ----------------------------------------------------------------------------------

    def folder_problem(self, folder: Path) -> str | None:
        """What keeps the existing, non-empty ``folder`` from being replaced as a folder of this kind, or
        None: its config must parse with this kind's schema, and it may hold nothing but this kind's files,
        files its config names (e.g. an architecture file) and hidden temporary files of our writers."""
        refusal = f"exists, is not empty and is not a {self.short or self.kind} folder"
        try:
            config = json.loads((folder / self.config).read_bytes())
        except (OSError, ValueError):
            return f"{refusal} (no readable {self.config})"
        if not isinstance(config, dict) or config.get("schema") != self.schema:
            return f"{refusal} ({self.config} has no schema {self.schema!r})"
        known = {self.weights, self.config, *self.files}
        known |= {v for v in config.values() if isinstance(v, str) and "/" not in v and (folder / v).is_file()}
        for p in folder.iterdir():
            if p.name in known:
                if not p.is_file():
                    return f"{refusal} ({p.name} is not a file)"
            elif not (p.name.startswith(".") and ".tmp" in p.name and p.is_file()):
                return f"{refusal} (it also holds {p.name})"
        return None  # an incomplete folder of this kind (a file missing) may be replaced: it is ours

    def check_target(self, out_dir: Path | str, inputs: Iterable[PathLike | None] = ()) -> Path:
        """Refuse ``out_dir`` (before any work) unless it is absent, empty or a complete folder of this kind,
        and apart from ``inputs`` (e.g. the training dataset); returns it resolved."""
        return claim_output_dir(out_dir, inputs=inputs, overwrite=True, replaceable=self.folder_problem)

    @contextmanager
    def staging(self, out_dir: Path | str, inputs: Iterable[PathLike | None] = ()) -> Iterator[Path]:
        """A fresh, empty staging folder for ``out_dir`` (whose lock is held until the block ends). When
        the block ends it must hold the weights and the config; it then replaces ``out_dir`` whole. If the
        block raises, it is removed and ``out_dir`` is left as it was."""
        output = OutputDir(out_dir, inputs=inputs, overwrite=True, replaceable=self.folder_problem)
        try:
            yield output.staging
            for name in (self.weights, self.config, *self.files):
                if not (output.staging / name).is_file():
                    raise FactoryError(f"{out_dir}: {name} was not written; not saving an incomplete {self.kind}")
        except BaseException:
            output.abort()
            raise
        output.publish()

    def write_weights(self, folder: Path, model: "torch.nn.Module") -> None:
        """``model``'s state dict as ``folder/<weights>`` (readable by all, as the JSON files are)."""
        from safetensors.torch import save_file

        path = Path(folder) / self.weights
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        with writing(path):
            save_file(state, str(path), metadata=dict(self.metadata) if self.metadata is not None else None)
            os.chmod(path, 0o644)  # safetensors creates the file private (0600)

    def write_config(self, folder: Path, config: Mapping[str, Any]) -> None:
        if config.get("schema") != self.schema:
            raise ValueError(f"{self.kind} config: schema must be {self.schema!r}; got {config.get('schema')!r}")
        atomic_write_bytes(Path(folder) / self.config, json_bytes(config, indent=self.indent, sort_keys=self.sort_keys))

    def save(self, out_dir: Path | str, model: "torch.nn.Module", config: Mapping[str, Any],
             files: Mapping[str, bytes] | None = None, inputs: Iterable[PathLike | None] = ()) -> None:
        """Write the weights, ``files`` (name -> bytes) and the config, then move the folder into place."""
        with self.staging(out_dir, inputs) as folder:
            self.write_weights(folder, model)
            for name, data in (files or {}).items():
                atomic_write_bytes(folder / name, data)
            self.write_config(folder, config)

    # -- loading ---------------------------------------------------------------------------------

    def read(self, model_dir: Path | str) -> dict[str, Any]:
        """The config of the folder ``model_dir``, after checking that every file is there and that the
        config has this kind's schema and fields."""
        path = Path(model_dir)
        if not path.is_dir():
            hint = f" ({self.hint})" if self.hint else ""
            raise FactoryError(f"{path}: no such {self.short or self.kind} folder{hint}")
        for name in (self.config, self.weights, *self.files):
            if not (path / name).is_file():
                raise FactoryError(f"{path / name}: missing; {path} is not a complete {self.kind} folder")
        config_path = path / self.config
        config = read_json(config_path, what=f"{self.kind} config")
        if not isinstance(config, dict) or config.get("schema") != self.schema:
            raise FactoryError(f"{config_path}: schema is not {self.schema!r}")
        missing = [k for k in self.keys if k not in config]
        if missing:
            raise FactoryError(f"{config_path}: missing field(s) {', '.join(missing)}")
        return config

    def load_weights(self, model_dir: Path | str) -> dict[str, "torch.Tensor"]:
        from safetensors.torch import load_file

        path = Path(model_dir) / self.weights
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise FactoryError(f"{path}: unreadable weights ({_first_line(exc)})") from None

    def load_into(self, model: "torch.nn.Module", model_dir: Path | str,
                  state: Mapping[str, "torch.Tensor"] | None = None) -> None:
        """Load the folder's weights (or ``state``, read before) into ``model``, strictly."""
        state = self.load_weights(model_dir) if state is None else state
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            path = Path(model_dir)
            raise FactoryError(f"{path / self.weights}: weights do not match {path / self.config} "
                               f"({_first_line(exc)})") from None


# Folders of random-weight stand-in models (factory.generate.random_sd, factory.curate.scorers.random_clip)
# carry this file: whatever is made with them tests a pipeline and is never shown as a result.
RANDOM_WEIGHTS_MARKER = "random_weights.json"


def is_random_weights(path: Path | str) -> bool:
    """Whether the model folder ``path`` (or the folder of the weights file ``path``) holds random weights."""
    p = Path(path)
    return (p / RANDOM_WEIGHTS_MARKER).is_file() or (p.parent / RANDOM_WEIGHTS_MARKER).is_file()
