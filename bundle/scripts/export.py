"""ONNX export of ``network_def`` (FTN + STN, or FTN only), checked against the eager network with onnxruntime.

Usage (from ``bundle/``; ``--refine False`` exports the FTN alone)::

    python -m scripts.export --ckpt_file models/model.pt --filepath models/model.onnx [--refine False]

It runs ``monai.bundle.onnx_export`` with the settings that work offline with torch 2.14: the TorchScript-based
exporter (``dynamo=False``; the default dynamo exporter needs ``onnxscript``), opset 17, input ``image``
``B, 1, H, W`` and output ``pred`` ``B, 4, H, W`` with dynamic batch, height and width (multiples of 16), then runs
the ONNX model with onnxruntime on inputs of two other sizes and compares with the eager network (the maximum
difference, relative to the largest logit, must stay below ``tolerance``). The TorchScript export is MONAI's
``python -m monai.bundle ckpt_export network_def ...`` (see the README).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser, onnx_export

__all__ = ["DYNAMIC_AXES", "export_onnx", "compare_onnx", "main"]

BUNDLE = Path(__file__).resolve().parent.parent
DYNAMIC_AXES = {"image": {0: "batch", 2: "height", 3: "width"}, "pred": {0: "batch", 2: "height", 3: "width"}}
CHECK_SHAPES = ((1, 1, 64, 80), (2, 1, 96, 96))


def _network(config_file: str, ckpt_file: str, refine: bool, **override: object) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(config_file)
    for key, value in override.items():
        parser[key] = value
    parser["network_def#refine"] = refine
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(ckpt_file, map_location="cpu", weights_only=True))
    return net.eval()


def compare_onnx(onnx_file: str, net: torch.nn.Module, shapes: tuple[tuple[int, ...], ...] = CHECK_SHAPES) -> float:
    """Largest ``|onnx - eager| / max|eager|`` over random inputs of ``shapes`` (onnxruntime, CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in shapes:
        x = torch.rand(shape, generator=generator)
        with torch.no_grad():
            expected = net(x).numpy()
        (got,) = session.run(["pred"], {"image": x.numpy()})
        if got.shape != expected.shape:
            raise AssertionError(f"ONNX output shape {got.shape} for input {shape}, eager {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12)))
    return worst


def export_onnx(
    ckpt_file: str,
    filepath: str,
    refine: bool = True,
    config_file: str | None = None,
    meta_file: str | None = None,
    tolerance: float = 1e-4,
    **override: object,
) -> float:
    """Export ``network_def`` with weights ``ckpt_file`` to ``filepath``; return the checked relative difference.

    ``config_file``/``meta_file`` default to this bundle's ``configs/inference.json``/``metadata.json``; ``override``
    sets config ids (e.g. ``width=4``). Raises ``AssertionError`` if onnxruntime's output differs by more than
    ``tolerance`` (relative to the largest logit).
    """
    config_file = config_file or str(BUNDLE / "configs" / "inference.json")
    meta_file = meta_file or str(BUNDLE / "configs" / "metadata.json")
    Path(filepath).parent.mkdir(parents=True, exist_ok=True)
    onnx_export(
        net_id="network_def",
        filepath=filepath,
        ckpt_file=ckpt_file,
        meta_file=meta_file,
        config_file=config_file,
        use_trace=True,
        input_shape=[1, 1, 64, 64],
        converter_kwargs={
            "dynamo": False,
            "opset_version": 17,
            "input_names": ["image"],
            "output_names": ["pred"],
            "dynamic_axes": DYNAMIC_AXES,
        },
        **{"network_def#refine": refine, **override},
    )
    difference = compare_onnx(filepath, _network(config_file, ckpt_file, refine, **override))
    if difference > tolerance:
        raise AssertionError(f"{filepath}: onnxruntime differs from eager by {difference:.2e} (> {tolerance:.0e}).")
    return difference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_file", default=str(BUNDLE / "models" / "model.pt"))
    parser.add_argument("--filepath", default=str(BUNDLE / "models" / "model.onnx"))
    parser.add_argument("--refine", default="True", choices=["True", "False"], help="False: the FTN alone")
    parser.add_argument("--config_file", default=None, help="default: configs/inference.json of this bundle")
    parser.add_argument("--meta_file", default=None, help="default: configs/metadata.json of this bundle")
    args = parser.parse_args(argv)
    refine = args.refine == "True"
    difference = export_onnx(args.ckpt_file, args.filepath, refine, args.config_file, args.meta_file)
    what = "FTN + STN" if refine else "FTN only"
    print(f"{args.filepath}: {what}, onnxruntime vs eager max relative difference {difference:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
