"""The deployment pipeline of ``configs/inference.json``, for the workflows that must measure what users get.

Validation (model selection), test-set evaluation and the robustness experiment segment whole volumes exactly as the
inference workflow and the MONAI Label app do, so every reported number is the number a user gets. They do not
repeat the pipeline; they read it from ``inference.json``, the one definition of the region the network sees:

* ``preprocessing``: volume normalisation (2nd-98th percentile) and in-plane resampling to ``pixdim``, whole slices;
* ``inferer``: :class:`scripts.inference.inferer.CoopSegInferer` (every slice whole, padded to a multiple of 16);
* ``label_postprocessing``: probabilities back to the input grid (``Invertd``), argmax per frame, then the optional
  clean-up switches ``keep_largest_component`` and ``fill_holes``.

``train.json`` takes its default ``pixdim`` from ``inference.json`` (:func:`config_value`) and passes its own
``pixdim`` back as an override, so a training run with another pixel size validates at that pixel size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.transforms import Compose

__all__ = ["CLEANUP_SWITCHES", "DeploymentConfig", "config_value"]

CLEANUP_SWITCHES = ("keep_largest_component", "fill_holes")
"""``inference.json`` switches of the label clean-up after the argmax (each a MONAI transform, off when false)."""


def config_value(config_file: str | Path, key: str) -> Any:
    """The literal value of top-level ``key`` in the JSON config ``config_file`` (no references resolved)."""
    path = Path(config_file)
    content = json.loads(path.read_text())
    if key not in content:
        raise KeyError(f"{path} has no top-level key {key!r}.")
    return content[key]


class DeploymentConfig:
    """``inference.json`` parsed with ``overrides``; hands out its preprocessing, inferer and label post-processing.

    Args:
        config_file: the bundle's ``configs/inference.json``.
        overrides: config values to replace (``bundle_root``, ``device``, ``pixdim`` ...), as on the command line.

    Components are instantiated once each; the label post-processing once per clean-up setting.
    """

    def __init__(self, config_file: str | Path, overrides: Mapping[str, Any] | None = None) -> None:
        self.config_file = Path(config_file)
        self.overrides = dict(overrides or {})
        self._parser = self._parse(self.overrides)
        self._postprocessing: dict[tuple[bool, ...], Compose] = {}
        self._preprocessing: Compose | None = None
        self._inferer: Any = None

    def _parse(self, overrides: Mapping[str, Any]) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config(str(self.config_file))
        for key, value in overrides.items():
            parser[key] = value
        return parser

    def setting(self, key: str) -> Any:
        """A resolved value of the deployment config (e.g. ``pixdim``, ``keep_largest_component``)."""
        return self._parser.get_parsed_content(key)

    @property
    def cleanup(self) -> dict[str, bool]:
        """The deployed label clean-up: ``{switch: on}`` for :data:`CLEANUP_SWITCHES`."""
        return {name: bool(self.setting(name)) for name in CLEANUP_SWITCHES}

    @property
    def preprocessing(self) -> Compose:
        """The image preprocessing (``image`` ``F, H, W, D`` -> normalised, resampled); ``Invertd`` undoes it."""
        if self._preprocessing is None:
            self._preprocessing = self._parser.get_parsed_content("preprocessing")
        return self._preprocessing

    @property
    def inferer(self) -> Any:
        """The deployment inferer (:class:`scripts.inference.inferer.CoopSegInferer`)."""
        if self._inferer is None:
            self._inferer = self._parser.get_parsed_content("inferer")
        return self._inferer

    def label_postprocessing(self, **cleanup: bool) -> Compose:
        """``pred`` class probabilities on the preprocessed grid -> label codes ``F, H, W, D`` on the input grid.

        The deployment's own transforms (they invert :attr:`preprocessing`, the same instance); ``cleanup`` overrides
        switches of :data:`CLEANUP_SWITCHES` (e.g. ``keep_largest_component=True``), the others stay as deployed.
        """
        unknown = set(cleanup) - set(CLEANUP_SWITCHES)
        if unknown:
            raise ValueError(f"unknown clean-up switches {sorted(unknown)}; available: {CLEANUP_SWITCHES}.")
        settings = {**self.cleanup, **{k: bool(v) for k, v in cleanup.items()}}
        key = tuple(settings[name] for name in CLEANUP_SWITCHES)
        if key not in self._postprocessing:
            parser = self._parse({**self.overrides, **settings})
            parser["preprocessing"] = self.preprocessing  # Invertd must undo the instance that ran
            self._postprocessing[key] = Compose(parser.get_parsed_content("label_postprocessing"))
        return self._postprocessing[key]
