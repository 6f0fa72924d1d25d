"""A synthetic domain-shift suite, so the robustness experiment runs with no download.

Training data and test domains live in separate cached folders, so test domains can be added without touching the
training data (and the runs trained on it):

* **training data** (:func:`ensure_training_data`): source-domain phantoms (default :class:`PhantomAppearance`),
  ``training`` and ``validation`` subjects, ED + ES;
* **test domains** (:func:`ensure_test_domains`), each a list of test volumes:

  - ``source``: the in-domain test subjects;
  - appearance shifts, as between scanners and vendors, rendered from the **same** test subjects: tissue contrast,
    intensity gamma, partial-volume blur, noise, fat suppression, coarser in-plane resolution;
  - the four ACDC-C artefacts (TorchIO bias field, ghosting, motion, spike) applied to the source test volumes;
  - anatomy and geometry shifts: ``thorax`` and ``thorax_partial`` come from a second, independently parameterised
    anatomy model (:mod:`tools.robustness.anatomy`: heart size and wall thickness, RV shape, heart position, tilted
    short-axis planes, fields of view, resolutions and slice thicknesses the training generator never draws;
    ``thorax_partial`` also misses the base or the apex); ``rotated_flipped`` and ``fov_crop`` are the source test
    volumes turned by a multiple of 90 degrees and mirrored, or cropped to a 110 mm field of view around the heart.

The shift strengths were set from the ranges they imitate before any model was evaluated on them; they are not tuned
to a result. Datalists hold paths relative to their folder; a domain is the test set ``<folder>/datalist.json#<name>``.
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

import nibabel as nib
import numpy as np

from scripts.data.artefacts import generate_artefact_sets
from scripts.data.datalist import PHANTOM_VERSION, default_cache_dir
from scripts.data.nifti import write_nifti
from scripts.data.phantom import PhantomAppearance, write_phantom_dataset
from scripts.figures import pyplot, save_figure
from scripts.files import staged_dir, write_json_atomic
from scripts.labels import channel_names

__all__ = [
    "DOMAINS",
    "GROUPS",
    "SHIFTED",
    "SOURCE",
    "Domain",
    "ensure_test_domains",
    "ensure_training_data",
    "preview_domains",
    "write_test_domains",
    "write_training_data",
]

logger = logging.getLogger(__name__)

SUITE_VERSION = "domains-v2"
TRAINING_STREAM, VALIDATION_STREAM, TEST_STREAM, ANATOMY_STREAM, GEOMETRY_STREAM = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class Domain:
    """A test domain.

    ``kind`` is ``render`` (the source test subjects rendered with ``appearance`` / ``subject_kwargs``), ``artefact``
    (an ACDC-C artefact on the source test volumes), ``anatomy`` (the second anatomy model, ``coverage``) or
    ``geometry`` (``rotate_flip`` or ``crop_fov`` applied to the source test volumes).
    """

    name: str
    description: str
    kind: str = "render"
    group: str = "appearance"
    appearance: dict[str, Any] = field(default_factory=dict)
    subject_kwargs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


SOURCE = Domain("source", "in-domain: the training appearance and anatomy (default phantom)", group="source")
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
    Domain("RandomBias", "ACDC-C bias field (TorchIO RandomBiasField)", "artefact", "artefact"),
    Domain("RandomGhosting", "ACDC-C ghosting (TorchIO RandomGhosting)", "artefact", "artefact"),
    Domain("RandomMotion", "ACDC-C motion (TorchIO RandomMotion, 30 deg, 10 mm)", "artefact", "artefact"),
    Domain("RandomSpike", "ACDC-C k-space spike (TorchIO RandomSpike)", "artefact", "artefact"),
    Domain(
        "thorax",
        "second anatomy model: other heart sizes and wall thicknesses, RV shape, heart position, tilted planes, "
        "fields of view, resolutions and slice thicknesses",
        "anatomy",
        "anatomy",
        params={"coverage": "full"},
    ),
    Domain(
        "thorax_partial",
        "second anatomy model with partial coverage (base or apex missing)",
        "anatomy",
        "anatomy",
        params={"coverage": "partial"},
    ),
    Domain(
        "rotated_flipped",
        "source test volumes turned by 90, 180 or 270 degrees in-plane and mirrored",
        "geometry",
        "anatomy",
        params={"op": "rotate_flip"},
    ),
    Domain(
        "fov_crop",
        "source test volumes cropped to a 110 mm field of view around the heart",
        "geometry",
        "anatomy",
        params={"op": "crop_fov", "fov_mm": 110.0},
    ),
)
DOMAINS = {d.name: d for d in (SOURCE, *SHIFTED)}
GROUPS = {"appearance": "appearance", "artefact": "ACDC-C artefacts", "anatomy": "anatomy and geometry"}


def _select(names: Sequence[str] | None) -> list[Domain]:
    if names is None:
        return list(DOMAINS.values())
    unknown = [n for n in names if n not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown domains {unknown}; expected some of {list(DOMAINS)}.")
    return [DOMAINS["source"]] + [DOMAINS[n] for n in names if n != "source"]


def _relative(entries: list[dict[str, Any]], folder: str, domain: str | None = None) -> list[dict[str, Any]]:
    extra = {"domain": domain} if domain else {}
    return [{**e, "image": f"{folder}/{e['image']}", "label": f"{folder}/{e['label']}", **extra} for e in entries]


def _header(name: str, seed: int) -> dict[str, Any]:
    return {"name": name, "version": f"{SUITE_VERSION}/{PHANTOM_VERSION}", "seed": seed, "labels": channel_names()}


def write_training_data(out_dir: str | Path, n_train: int = 10, n_val: int = 5, seed: int = 0) -> dict[str, Any]:
    """Source-domain ``training`` and ``validation`` subjects (ED + ES) in ``out_dir``; returns the datalist."""
    out_dir = Path(out_dir)
    datalist = _header("CoopSeg synthetic training data (source domain)", seed)
    for key, n, stream in (("training", n_train, TRAINING_STREAM), ("validation", n_val, VALIDATION_STREAM)):
        entries = write_phantom_dataset(str(out_dir / key), n, seed=seed * 1000 + stream, prefix=key[:2])
        datalist[key] = _relative(entries, key)
    write_json_atomic(out_dir / "datalist.json", datalist)
    return datalist


def _geometry_domain(domain: Domain, source: list[dict[str, Any]], out_dir: Path, seed: int) -> list[dict[str, Any]]:
    """Apply the domain's geometric operation to each source test subject (ED and ES alike) and write the volumes."""
    from .anatomy import crop_fov, rotate_flip

    entries = []
    for index, subject in enumerate(sorted({e["subject"] for e in source})):
        rng = np.random.default_rng([seed, GEOMETRY_STREAM, zlib.crc32(domain.name.encode()), index])
        k, flip = int(rng.integers(1, 4)), True
        for entry in (e for e in source if e["subject"] == subject):
            image_img, label_img = nib.load(str(out_dir / entry["image"])), nib.load(str(out_dir / entry["label"]))
            image = np.asarray(image_img.dataobj, dtype=np.float32)
            label = np.asarray(label_img.dataobj, dtype=np.uint8)
            if domain.params["op"] == "rotate_flip":
                image, label, affine = rotate_flip(image, label, image_img.affine, k, flip)
            else:
                frame_rng = np.random.default_rng([seed, GEOMETRY_STREAM, index])  # the same crop for ED and ES
                image, label, affine = crop_fov(image, label, image_img.affine, domain.params["fov_mm"], frame_rng)
            rel_image = f"{domain.name}/{Path(entry['image']).name}"
            rel_label = f"{domain.name}/{Path(entry['label']).name}"
            write_nifti(image.astype(np.float32), affine, out_dir / rel_image)
            write_nifti(label.astype(np.uint8), affine, out_dir / rel_label)
            entries.append({**entry, "image": rel_image, "label": rel_label, "domain": domain.name})
    return entries


def write_test_domains(
    out_dir: str | Path, n_test: int = 10, seed: int = 0, domains: Sequence[str] | None = None, n_copies: int = 1
) -> dict[str, Any]:
    """Every chosen test domain (``source`` always) in ``out_dir``; returns the datalist (also ``datalist.json``).

    Args:
        out_dir: output folder.
        n_test: test subjects per domain (ED + ES each); rendered, artefact and geometry domains share the source's
            subjects, the anatomy domains have their own.
        seed: data seed (the test subjects use their own seed streams, disjoint from the training data's).
        domains: domain names (default all of :data:`DOMAINS`).
        n_copies: random artefact copies per test volume for the artefact domains (ACDC-C uses 3).
    """
    from .anatomy import write_thorax_dataset

    out_dir = Path(out_dir)
    chosen = _select(domains)
    datalist = {
        **_header("CoopSeg synthetic test domains", seed),
        "domains": {d.name: d.description for d in chosen},
        "groups": {d.name: d.group for d in chosen},
        "in_domain": "source",
    }
    for domain in chosen:
        if domain.kind == "render":
            appearance = PhantomAppearance(**domain.appearance)
            entries = write_phantom_dataset(
                str(out_dir / domain.name), n_test, seed=seed * 1000 + TEST_STREAM, prefix="te",
                appearance=appearance, **domain.subject_kwargs,
            )  # fmt: skip
            datalist[domain.name] = _relative(entries, domain.name, domain.name)
        elif domain.kind == "anatomy":
            entries = write_thorax_dataset(
                out_dir / domain.name, n_test, seed=seed * 1000 + ANATOMY_STREAM, prefix="th",
                coverage=domain.params["coverage"],
            )  # fmt: skip
            datalist[domain.name] = _relative(entries, domain.name, domain.name)
    source = datalist["source"]
    for domain in chosen:
        if domain.kind == "geometry":
            datalist[domain.name] = _geometry_domain(domain, source, out_dir, seed)
    artefacts = [d for d in chosen if d.kind == "artefact"]
    if artefacts:
        absolute = [{**e, "image": str(out_dir / e["image"]), "label": str(out_dir / e["label"])} for e in source]
        lists = generate_artefact_sets(
            absolute, out_dir, seed=seed, n_copies=n_copies, artefacts=[d.name for d in artefacts],
            name="artefact domains",
        )  # fmt: skip
        for domain in artefacts:
            datalist[domain.name] = [{**e, "domain": domain.name} for e in lists[domain.name]]
    datalist["test"] = source
    write_json_atomic(out_dir / "datalist.json", datalist)
    return datalist


def _signature(*parts: Any) -> str:
    return f"{zlib.crc32(repr(parts).encode()):08x}"


def ensure_training_data(cache_dir: str | Path | None = None, n_train: int = 10, n_val: int = 5, seed: int = 0) -> Path:
    """Generate the training data once (staged, then renamed into place) and return its folder."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / f"training-{SUITE_VERSION}_{PHANTOM_VERSION}_seed{seed}_tr{n_train}_va{n_val}"
    if not (target / "datalist.json").is_file():
        logger.warning("SYNTHETIC DATA: generating the training data into %s ...", target)
        with staged_dir(target) as staging:
            write_training_data(staging, n_train, n_val, seed)
    return target


def ensure_test_domains(
    cache_dir: str | Path | None = None,
    n_test: int = 10,
    seed: int = 0,
    domains: Sequence[str] | None = None,
    n_copies: int = 1,
) -> Path:
    """Generate the test domains once and return their folder; the name changes with the domain definitions."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    chosen = [dataclasses.asdict(d) for d in _select(domains)]
    name = f"{SUITE_VERSION}_{PHANTOM_VERSION}_{_signature(chosen)}_seed{seed}_te{n_test}_c{n_copies}"
    target = root / name
    if not (target / "datalist.json").is_file():
        logger.warning("SYNTHETIC DATA: generating the test domains into %s ...", target)
        with staged_dir(target) as staging:
            write_test_domains(staging, n_test, seed, domains, n_copies)
    return target


def preview_domains(suite_dir: str | Path, path: str | Path, subject_index: int = 0) -> Path:
    """PNG: the middle slice of one test subject (ED) in every domain of a suite, label contours drawn in."""
    plt = pyplot()
    suite_dir = Path(suite_dir)
    datalist = json.loads((suite_dir / "datalist.json").read_text())
    names = list(datalist["domains"])
    columns = min(8, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        entry = [e for e in datalist[name] if e.get("frame") == "ED"][subject_index]
        image = np.asanyarray(nib.load(str(suite_dir / entry["image"])).dataobj, dtype=np.float32)
        label = np.asanyarray(nib.load(str(suite_dir / entry["label"])).dataobj)
        k = int(np.argmax((label > 0).sum(axis=(0, 1)))) if label.any() else image.shape[2] // 2
        sl = image[:, :, k]
        low, high = np.percentile(sl, (2, 98))
        ax.imshow(np.clip((sl - low) / max(high - low, 1e-6), 0, 1), cmap="gray")
        ax.contour(label[:, :, k], levels=[0.5, 1.5, 2.5], colors=["red", "lime", "blue"], linewidths=0.5)
        ax.set_title(name, fontsize=8)
    return save_figure(fig, path)
