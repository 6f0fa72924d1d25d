"""A synthetic domain-shift suite from the phantom generator, so the robustness protocol runs with no download.

The source domain is the phantom as the bundle trains on it (default :class:`PhantomAppearance`). Every test domain
holds the **same test subjects** (same anatomy, same seeds), rendered or corrupted differently, so domains differ only
in the shift and comparisons between them are paired:

* appearance shifts, as between scanners and vendors: tissue contrast, intensity gamma, partial-volume blur, noise,
  fat suppression (fields of :class:`PhantomAppearance`);
* a resolution shift: coarser in-plane pixels, which the bundle's preprocessing resamples to 1.36719 mm;
* the four ACDC-C artefacts (TorchIO bias field, ghosting, motion, spike; :mod:`scripts.data.artefacts`) applied to
  the source test volumes.

The shift strengths were set from the ranges they imitate (vendor contrast and resolution differences, ACDC-C's
artefact parameters), before any model was evaluated on them; they are not tuned to a result.

``datalist.json`` holds ``training`` and ``validation`` (source domain), ``test`` (= ``source``) and one list per
domain, paths relative to the suite folder, so the bundle trains with ``--dataset_dir <suite>`` and any domain is a
test set ``<suite>/datalist.json#<domain>``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scripts.data.artefacts import generate_artefact_sets
from scripts.data.datalist import PHANTOM_VERSION, default_cache_dir
from scripts.data.phantom import PhantomAppearance, write_phantom_dataset
from scripts.evaluation.report import save_figure
from scripts.files import staged_dir, write_json_atomic
from scripts.labels import channel_names

__all__ = ["Domain", "DOMAINS", "SOURCE", "SHIFTED", "ensure_domain_suite", "preview_domains", "write_domain_suite"]

logger = logging.getLogger(__name__)

SUITE_VERSION = "domains-v1"


@dataclass(frozen=True)
class Domain:
    """A test domain: phantom appearance overrides, ``generate_subject`` overrides, or an ACDC-C artefact."""

    name: str
    description: str
    appearance: dict[str, Any] = field(default_factory=dict)
    subject_kwargs: dict[str, Any] = field(default_factory=dict)
    artefact: str | None = None


SOURCE = Domain("source", "in-domain: the training appearance (default phantom)")
SHIFTED = (
    Domain(
        "contrast",
        "another vendor's contrast: blood/myocardium 2:1 instead of about 3:1, brighter muscle and liver, darker fat",
        appearance={"intensities": {"myocardium": 0.5, "muscle": 0.45, "liver": 0.55, "fat": 0.7, "lung": 0.1}},
    ),
    Domain("gamma", "intensity gamma 2 (darker mid-tones, higher contrast)", appearance={"gamma": 2.0}),
    Domain("blur", "partial-volume blur 2.5 mm (training: 1 mm)", appearance={"blur_sigma_mm": 2.5}),
    Domain("noise", "Rician noise 0.12 of the blood signal (training: 0.04)", appearance={"noise_sigma": 0.12}),
    Domain("fat_suppression", "fat signal suppressed by 90 %", appearance={"fat_suppression": 0.9}),
    Domain(
        "resolution",
        "2.4-3.0 mm in-plane pixels (training: 1.2-1.9 mm), upsampled by the preprocessing",
        subject_kwargs={"spacing_range": (2.4, 3.0)},
    ),
    Domain("RandomBias", "ACDC-C bias field (TorchIO RandomBiasField)", artefact="RandomBias"),
    Domain("RandomGhosting", "ACDC-C ghosting (TorchIO RandomGhosting)", artefact="RandomGhosting"),
    Domain("RandomMotion", "ACDC-C motion (TorchIO RandomMotion, 30 deg, 10 mm)", artefact="RandomMotion"),
    Domain("RandomSpike", "ACDC-C k-space spike (TorchIO RandomSpike)", artefact="RandomSpike"),
)
DOMAINS = {d.name: d for d in (SOURCE, *SHIFTED)}


def _select(names: Sequence[str] | None) -> list[Domain]:
    if names is None:
        return list(DOMAINS.values())
    unknown = [n for n in names if n not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown domains {unknown}; expected some of {list(DOMAINS)}.")
    return [DOMAINS["source"]] + [DOMAINS[n] for n in names if n != "source"]


def write_domain_suite(
    out_dir: str | Path,
    n_train: int = 30,
    n_val: int = 5,
    n_test: int = 10,
    seed: int = 0,
    domains: Sequence[str] | None = None,
    n_copies: int = 1,
) -> dict[str, Any]:
    """Write the suite into ``out_dir`` and return the datalist (also written as ``out_dir/datalist.json``).

    Args:
        out_dir: output folder.
        n_train, n_val: source-domain training and validation subjects (ED + ES volumes each).
        n_test: test subjects per domain (the same subjects in every domain).
        seed: data seed (training, validation and test subjects use separate seed streams).
        domains: domain names (default all of :data:`DOMAINS`; ``source`` is always included).
        n_copies: random artefact copies per test volume for the artefact domains (ACDC-C uses 3).
    """
    out_dir = Path(out_dir)
    chosen = _select(domains)
    datalist: dict[str, Any] = {
        "name": "CoopSeg synthetic domain-shift suite",
        "version": f"{SUITE_VERSION}/{PHANTOM_VERSION}",
        "seed": seed,
        "labels": channel_names(),
        "domains": {d.name: d.description for d in chosen},
        "in_domain": "source",
    }

    def write(key: str, folder: str, n: int, stream: int, domain: Domain = SOURCE) -> list[dict[str, Any]]:
        appearance = PhantomAppearance(**domain.appearance)
        entries = write_phantom_dataset(
            str(out_dir / folder),
            n,
            seed=seed * 1000 + stream,
            prefix=key[:2],
            appearance=appearance,
            **domain.subject_kwargs,
        )
        return [
            {**e, "image": f"{folder}/{e['image']}", "label": f"{folder}/{e['label']}", "domain": domain.name}
            for e in entries
        ]

    datalist["training"] = write("training", "training", n_train, 0)
    datalist["validation"] = write("validation", "validation", n_val, 1)
    for domain in chosen:
        if domain.artefact is None:
            # stream 2 for every rendered domain: the same anatomy under each shift
            datalist[domain.name] = write("test", domain.name, n_test, 2, domain)
    source_abs = [
        {**e, "image": str(out_dir / e["image"]), "label": str(out_dir / e["label"])} for e in datalist["source"]
    ]
    artefacts = [d for d in chosen if d.artefact is not None]
    if artefacts:
        lists = generate_artefact_sets(
            source_abs,
            out_dir,
            seed=seed,
            n_copies=n_copies,
            artefacts=[d.artefact for d in artefacts],
            name="artefact domains",
        )
        for domain in artefacts:
            rel = [{**e, "domain": domain.name} for e in lists[domain.artefact]]
            datalist[domain.name] = rel
    datalist["test"] = datalist["source"]
    write_json_atomic(out_dir / "datalist.json", datalist)
    return datalist


def suite_name(n_train: int, n_val: int, n_test: int, seed: int, domains: Sequence[str] | None, n_copies: int) -> str:
    """Cache folder name; changes with the phantom version and the domain definitions."""
    chosen = _select(domains)
    signature = zlib.crc32(repr([dataclasses.asdict(d) for d in chosen]).encode())
    return f"{SUITE_VERSION}_{PHANTOM_VERSION}_{signature:08x}_seed{seed}_tr{n_train}_va{n_val}_te{n_test}_c{n_copies}"


def ensure_domain_suite(
    cache_dir: str | Path | None = None,
    n_train: int = 30,
    n_val: int = 5,
    n_test: int = 10,
    seed: int = 0,
    domains: Sequence[str] | None = None,
    n_copies: int = 1,
) -> Path:
    """Generate the suite once (in a staging folder renamed into place) and return its folder."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / suite_name(n_train, n_val, n_test, seed, domains, n_copies)
    if (target / "datalist.json").is_file():
        logger.info("domain suite: using the cached suite in %s", target)
        return target
    logger.warning("SYNTHETIC DATA: generating the domain-shift suite into %s ...", target)
    with staged_dir(target) as staging:
        write_domain_suite(staging, n_train, n_val, n_test, seed, domains, n_copies)
    return target


def preview_domains(suite_dir: str | Path, path: str | Path, subject_index: int = 0) -> Path:
    """PNG: the middle slice of one test subject (ED) in every domain of a suite, label contours in the source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    suite_dir = Path(suite_dir)
    datalist = json.loads((suite_dir / "datalist.json").read_text())
    names = list(datalist["domains"])
    fig, axes = plt.subplots(1, len(names), figsize=(2.0 * len(names), 2.3), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        entry = [e for e in datalist[name] if e.get("frame") == "ED"][subject_index]
        image = np.asanyarray(nib.load(str(suite_dir / entry["image"])).dataobj, dtype=np.float32)
        k = image.shape[2] // 2
        sl = image[:, :, k]
        low, high = np.percentile(sl, (2, 98))
        ax.imshow(np.clip((sl - low) / max(high - low, 1e-6), 0, 1), cmap="gray")
        if name == "source":
            label = np.asanyarray(nib.load(str(suite_dir / entry["label"])).dataobj)[:, :, k]
            ax.contour(label, levels=[0.5, 1.5, 2.5], colors=["red", "lime", "blue"], linewidths=0.6)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    return save_figure(fig, path)
