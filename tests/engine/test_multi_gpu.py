"""Multi-process training on CPU with gloo: DDP gradient averaging, and multi_gpu_train.json run by torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from monai.bundle import ConfigParser
from torch.nn.parallel import DistributedDataParallel

from conftest import BUNDLE_ROOT
from scripts.data.phantom import write_phantom_dataset
from scripts.engine.distributed import rank_partition, state_sha256
from scripts.engine.trainer import CooperativeStep, CooperativeTrainer
from scripts.model.networks import CoopSegNet

TRAIN_CONFIG = BUNDLE_ROOT / "configs" / "train.json"
MULTI_GPU_CONFIG = BUNDLE_ROOT / "configs" / "multi_gpu_train.json"
WORLD = 2


def _rank_batch(rank: int, n: int = 3, size: int = 32) -> dict[str, torch.Tensor]:
    """A deterministic, rank-specific batch with fixed hard examples (so no randomness differs between runs)."""
    g = torch.Generator().manual_seed(100 + rank)
    label = torch.randint(0, 4, (n, size, size), generator=g)
    image = torch.rand(n, 1, size, size, generator=g)
    return {
        "image": image,
        "label": label,
        "hard_image": torch.rand(n, 1, size, size, generator=g),
        "hard_seg_logits": torch.randn(n, 4, size, size, generator=g),
    }


def _two_part_backward(step: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """What the trainer does: the standard part forward + backward, then the hard part forward + backward."""
    image, label = batch["image"], batch["label"]
    losses, *_ = step("standard", image, label, image=image)
    torch.stack(list(losses.values())).sum().backward()
    hard = step("hard", image, label, hard_image=batch["hard_image"], hard_seg_logits=batch["hard_seg_logits"])
    torch.stack(list(hard.values())).sum().backward()


def _gradients(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
        net = CoopSegNet(width=4).train()
        bare = DistributedDataParallel(net)  # a collective: every rank builds it
        try:
            CooperativeTrainer("cpu", 1, [], network=bare, optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
        except TypeError as e:
            Path(out_dir, f"refused{rank}.txt").write_text(str(e))
        del bare
        ddp = DistributedDataParallel(CooperativeStep(net), find_unused_parameters=True)
        net.zero_grad(set_to_none=True)
        _two_part_backward(ddp, _rank_batch(rank))
        torch.save(_gradients(net), Path(out_dir, f"grads{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_cooperative_step_averages_the_two_part_gradient(tmp_path: Path) -> None:
    """Under DDP, the gradient after both parts equals the mean of the per-rank single-process gradients."""
    # fork: the workers inherit the imported modules instead of importing torch and MONAI again
    mp.start_processes(_ddp_worker, (str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, start_method="fork")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: the summation order of the convolutions is then the same
    try:
        _compare_with_single_process(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _compare_with_single_process(tmp_path: Path) -> None:
    torch.manual_seed(0)  # rank 0's initial weights, which DDP broadcast to every rank
    reference = CoopSegNet(width=4).train()
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
    expected: dict[str, torch.Tensor] = {}
    for rank in range(WORLD):
        reference.load_state_dict(initial)
        reference.zero_grad(set_to_none=True)
        _two_part_backward(CooperativeStep(reference), _rank_batch(rank))
        for name, grad in _gradients(reference).items():
            expected[name] = expected.get(name, 0) + grad / WORLD
    encoder_bn_weight = "image_encoder.general_encoder.inc.1.weight"
    for rank in range(WORLD):
        grads = torch.load(tmp_path / f"grads{rank}.pt", weights_only=True)
        assert set(grads) == set(expected) == {n for n, _ in reference.named_parameters()}
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-5, msg=f"rank {rank}: {name}")
    # the per-rank gradients really differ, so equality above is the all-reduce and not a coincidence
    single = [None, None]
    for rank in range(WORLD):
        reference.load_state_dict(initial)
        reference.zero_grad(set_to_none=True)
        _two_part_backward(CooperativeStep(reference), _rank_batch(rank))
        single[rank] = _gradients(reference)[encoder_bn_weight]
    assert not torch.allclose(single[0], single[1])
    refused = (tmp_path / "refused0.txt").read_text()
    assert "CooperativeStep" in refused and "bypasses DDP" in refused


# handlers that must run on every rank, and why; every other train.json handler must be rank-0 only
EVERY_RANK = {
    "scripts.engine.checkpoints.ResumeTraining": "every rank restores the same training state",
    "ValidationHandler": "MONAI's metrics all-gather across ranks, so every rank validates its share",
    "LrScheduleHandler": "every rank's optimiser must follow the schedule",
    "scripts.engine.averaging.UpdateAveragedNetwork": "every rank validates its share with the averaged weights",
}


def test_rank_zero_handlers_are_named_not_numbered() -> None:
    """Handlers that write (logs, pictures, checkpoints) sit in the rank-0 lists and are disabled on other ranks by
    name, so reordering train.json cannot move a writer onto every rank."""
    train = json.loads(TRAIN_CONFIG.read_text())
    multi = json.loads(MULTI_GPU_CONFIG.read_text())
    assert not any("#handlers#" in key for key in multi), "multi_gpu_train.json must not address handlers by index"
    for section in ("train", "validate"):
        assert all(h["_target_"] in EVERY_RANK for h in train[section]["handlers"]), section
        for handler in train[section]["rank0_handlers"]:
            if isinstance(handler, dict):
                assert "@is_not_rank0" in handler.get("_disabled_", ""), handler["_target_"]
    assert train["validate"]["best_checkpoint"]["_disabled_"] == "@is_not_rank0"
    assert "@validate#best_checkpoint" in train["validate"]["rank0_handlers"]
    assert train["train"]["summary_writer"]["_disabled_"] == "@is_not_rank0"
    assert train["train"]["trainer"]["train_handlers"] == "$@train#handlers + @train#rank0_handlers"
    assert multi["train#trainer#train_handlers"] == "$@train#rank_handlers + @train#handlers + @train#rank0_handlers"
    assert train["validate"]["evaluator"]["val_handlers"] == "$@validate#handlers + @validate#rank0_handlers"
    assert multi["train#dataloader#shuffle"] is False and multi["train#dataloader#sampler"] == "@train#sampler"


def test_rank_partition_splits_and_refuses_too_few_volumes() -> None:
    data = [{"image": f"v{i}"} for i in range(5)]
    parts = [rank_partition(data, r, 2) for r in range(2)]
    assert sorted(parts[0] + parts[1], key=str) == sorted(data, key=str)
    assert len(parts[0]) == 3 and len(parts[1]) == 2
    with pytest.raises(ValueError, match="at least one validation volume per process: 1 volume"):
        rank_partition(data[:1], 0, 2)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    datalist = {}
    for key, n, seed in (("training", 2, 1), ("validation", 1, 2)):  # 1 subject = ED + ES = 2 volumes
        entries = write_phantom_dataset(root / key, n, seed=seed, n_slices_range=(4, 5))
        datalist[key] = [{**e, "image": f"{key}/{e['image']}", "label": f"{key}/{e['label']}"} for e in entries]
    (root / "datalist.json").write_text(json.dumps(datalist))
    return root


def test_torchrun_two_processes_gloo(tiny_dataset: Path, tmp_path: Path) -> None:
    """`torchrun -m monai.bundle run` with train.json + multi_gpu_train.json, 2 CPU processes, gloo."""
    out = tmp_path / "out"
    tiny = {"pixdim": [5.0, 5.0, -1], "crop_size": 32, "batch_size": 4, "epochs": 2, "num_workers": 0, "width": 4}
    configs = f"['{TRAIN_CONFIG}','{MULTI_GPU_CONFIG}']"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
            "--log-dir", str(out / "torchrun"), "--redirects", "3",
            "-m", "monai.bundle", "run", "--config_file", configs, "--dataset_dir", str(tiny_dataset),
            "--ckpt_dir", str(out / "models"), "--output_dir", str(out / "logs"),
            "--rank_report_dir", str(out / "reports")]  # fmt: skip
    for key, value in tiny.items():
        args += [f"--{key}", json.dumps(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}  # as documented: no PYTHONPATH needed
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    logs = {r: {s: next((out / "torchrun").glob(f"*/attempt_0/{r}/{s}.log")).read_text() for s in ("stdout", "stderr")}
            for r in range(WORLD)}  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:] + logs[0]["stderr"][-3000:] + logs[1]["stderr"][-3000:]

    reports = [json.loads((out / "reports" / f"rank{r}.json").read_text()) for r in range(WORLD)]
    training = json.loads((tiny_dataset / "datalist.json").read_text())["training"]
    n_slices = sum(nib.load(tiny_dataset / e["image"]).shape[-1] for e in training)
    padding = -n_slices % WORLD  # DistributedSampler(even_divisible=True) repeats this many samples
    for rank, report in enumerate(reports):
        assert report["rank"] == rank and report["world_size"] == WORLD and report["device"] == "cpu"
        assert report["iterations"] > 0 and report["epochs"] == 2
        assert report["sampler_epochs"] == [1, 2], "DistributedSampler.set_epoch was not called per epoch"
        assert f"rank {rank}/{WORLD}: finished" in logs[rank]["stdout"]
    for epoch in range(2):
        a, b = (set(reports[r]["indices"][epoch]) for r in range(WORLD))
        assert len(a & b) <= padding, "both ranks drew the same samples"
        assert a | b == set(range(n_slices)), "the ranks together did not cover the training slices"
    assert reports[0]["indices"][0] != reports[0]["indices"][1], "the shuffle did not change between epochs"
    assert reports[0]["state_sha256"] == reports[1]["state_sha256"], "weights differ between ranks"

    # outputs from rank 0 only; validation metrics printed by rank 0
    assert len(list((out / "logs").glob("events.out.tfevents.*"))) == 1
    assert "val_mean_dice" in logs[0]["stdout"] and "val_mean_dice" not in logs[1]["stdout"]
    assert "Epoch [1/2]" in logs[0]["stderr"] and "Epoch [1/2]" not in logs[1]["stderr"]  # progress bar

    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    parser["width"] = tiny["width"]
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(out / "models" / "model_final.pt", map_location="cpu", weights_only=True))
    assert state_sha256(net) == reports[0]["state_sha256"], "the saved checkpoint is not the ranks' final state"
    net.load_state_dict(torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True))
