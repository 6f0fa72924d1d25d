"""Benchmark: a cine from a PACS to a DICOM-SEG back in the PACS through the app, against the bundle's own inference.

In one run, alternating, on the same short-axis cine (224 x 224 pixels at the bundle's 1.36719 mm, 10 slices,
``--frames`` phases, stored in Orthanc as single-frame MR instances with phases interleaved):

(a) round trip, as 3D Slicer drives it: MONAI Label's client asks the app's server (``--studies`` = Orthanc's
    DICOMweb root) to segment the series (the server retrieves it by WADO-RS, converts it with the bundle's DICOM
    reader, segments it frame by frame and returns the 4D label with volumes, function and quality in its params),
    then submits that label (the server writes DICOM-SEG with the bundle and stores it by STOW-RS). Every repeat
    uses another copy of the series (new UIDs), so retrieval and conversion are timed each time;
(b) the bundle's file-to-file inference of the same series folder, as ``python -m monai.bundle run --config_file
    bundle/configs/inference.json --dataset_dir <dir> --output_dir <dir>`` runs it, in this process
    (``monai.bundle.run``), interpreter start excluded.

It prints both medians, their ratio (aim: at most 1.3) and the median of the ratios of adjacent pairs (less
sensitive to a machine whose load changes during the run), the machine and the command. Orthanc and the server run on
127.0.0.1 (Orthanc from Debian, ``orthanc`` and ``orthanc-dicomweb``); weights are ``bundle/models/model.pt`` when it
fits the network, else fresh ones (speed does not depend on the values, but masks of untrained weights are larger,
which makes the DICOM-SEG a worst case).

    python bench/pacs_roundtrip.py                   # 16 phases, 3 timed repeats of each after a warm-up
    python bench/pacs_roundtrip.py --frames 25 --repeats 5
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "bundle"
sys.path[:0] = [str(BUNDLE), str(REPO), str(REPO / "tests")]

from helpers import write_cine_series  # noqa: E402
from scripts.data.phantom import generate_subject  # noqa: E402
from tools.bundle_copy import bundle_files, copy_bundle  # noqa: E402
from tools.machine import cpu_model  # noqa: E402
from tools.servers import LabelServer, Orthanc, copy_app  # noqa: E402

logger = logging.getLogger("pacs_roundtrip")

SPACING = 1.36719
SHAPE = (224, 224, 10)
AIM = 1.3
LABEL_INFO = {"label_info": [{"name": n, "idx": i} for i, n in enumerate(("lv", "myocardium", "rv"), start=1)]}


def make_cine(frames: int) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W, D, F image, affine)``: a phantom's ED and ES stacks (blood at 1000), alternating over ``frames``."""
    subject = generate_subject(np.random.default_rng(0), spacing_range=(SPACING, SPACING), n_slices_range=(10, 10))
    phases = []
    for name in ("ED", "ES"):
        image, _, affine = subject[name]
        pad = [(0, max(0, SHAPE[0] - image.shape[0])), (0, max(0, SHAPE[1] - image.shape[1])), (0, 0)]
        phases.append(np.pad(image, pad)[: SHAPE[0], : SHAPE[1]] * 1000.0)
    return np.stack([phases[f % 2] for f in range(frames)], axis=-1), affine


def bundle_command(bundle: Path, dataset_dir: Path, output_dir: Path) -> list[str]:
    return [
        "python", "-m", "monai.bundle", "run",
        "--config_file", str(bundle / "configs" / "inference.json"),
        "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--logging_file", str(bundle / "configs" / "logging.conf"),
        "--bundle_root", str(bundle),
        "--dataset_dir", str(dataset_dir),
        "--output_dir", str(output_dir),
    ]  # fmt: skip


def run_bundle(bundle: Path, dataset_dir: Path, output_dir: Path) -> float:
    """Seconds of ``monai.bundle run`` (the command above, in this process) on ``dataset_dir``."""
    from monai.bundle import run

    start = time.perf_counter()
    run(**bundle_files(bundle), dataset_dir=str(dataset_dir), output_dir=str(output_dir))
    seconds = time.perf_counter() - start
    if not list(output_dir.glob("*_seg.nii.gz")):
        raise RuntimeError(f"the bundle wrote no label in {output_dir}")
    return seconds


def round_trip(client, pacs: Orthanc, series_uid: str, frames: int) -> float:
    """Seconds from the infer request to the DICOM-SEG stored in the PACS (infer, then save label)."""
    before = len(pacs.series_uids("SEG"))
    start = time.perf_counter()
    label_file, params = client.infer("coopseg", series_uid, {})
    client.save_label(series_uid, label_file, tag="final", params=LABEL_INFO)
    seconds = time.perf_counter() - start
    if len(pacs.series_uids("SEG")) != before + 1:
        raise RuntimeError(f"no new DICOM-SEG series in the PACS after saving the label of {series_uid}")
    if len(params["volumes_ml"]["lv"]) != frames or "quality" not in params:
        raise RuntimeError(f"result params without per-frame volumes or quality: {sorted(params)}")
    os.unlink(label_file)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16, help="cardiac phases of the cine")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path after one warm-up each")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("monai", "ignite", "httpx", "scripts"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from monailabel.client import MONAILabelClient

    threads = torch.get_num_threads()  # the server computes with as many threads as this process
    image, affine = make_cine(args.frames)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = copy_bundle(root, weights=BUNDLE / "models" / "model.pt")
        folders = []
        for i in range(args.repeats + 1):  # one series per round trip: each is retrieved and converted anew
            folder = root / "dicom" / f"run{i}" / "cine"
            folders.append(write_cine_series(folder, image, affine, seed=i, SeriesDescription=f"SAX cine {i}"))
        pacs = Orthanc(root / "orthanc").start()
        server = None
        try:
            uids = []
            for folder in folders:
                pacs.upload_folder(folder)
                uids.append(next(u for u in pacs.series_uids("MR") if u not in uids))
            conf = {"bundle_path": str(bundle), "model_dir": str(root / "models"), "skip_scoring": "true"}
            env = {"MONAI_LABEL_DATASTORE_CACHE_PATH": str(root / "cache"), "OMP_NUM_THREADS": str(threads)}
            server = LabelServer(copy_app(root / "app"), pacs.dicomweb, conf, cwd=root, env=env).wait_ready()
            (root / "client").mkdir()
            client = MONAILabelClient(server.url, tmpdir=str(root / "client"))
            times: dict[str, list[float]] = {"a": [], "b": []}
            for i, (folder, uid) in enumerate(zip(folders, uids, strict=True)):
                a = round_trip(client, pacs, uid, args.frames)
                b = run_bundle(bundle, folder.parent, root / "out" / f"run{i}")
                logger.info("%s a %.2f s, b %.2f s", "warm-up" if i == 0 else f"repeat {i}", a, b)
                if i:
                    times["a"].append(a)
                    times["b"].append(b)
        finally:
            if server is not None:
                server.stop()
            pacs.stop()

    a, b = statistics.median(times["a"]), statistics.median(times["b"])
    h, w, d = SHAPE
    documented = " ".join(bundle_command(Path("<bundle copy>"), Path("<series parent>"), Path("<out>")))
    print(f"\nmachine: {cpu_model()}; {os.cpu_count()} CPUs; torch {torch.__version__}; {threads} threads")
    print(f"command: python bench/pacs_roundtrip.py --frames {args.frames} --repeats {args.repeats}")
    print(f"cine {h} x {w} x {d} slices x {args.frames} phases ({d * args.frames} MR instances)")
    print(f"median of {args.repeats}, alternating a and b after one warm-up each:")
    print(f"(a) Orthanc -> app (infer + save label, MONAI Label client) -> DICOM-SEG in Orthanc: {a:.2f} s")
    print(f"(b) bundle file to file, in-process: {b:.2f} s  [{documented}]")
    paired = statistics.median(x / y for x, y in zip(times["a"], times["b"], strict=True))
    print(f"ratio a / b: {a / b:.2f} (aim: at most {AIM}); median of the paired ratios: {paired:.2f}")


if __name__ == "__main__":
    main()
