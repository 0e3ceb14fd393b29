"""The `train` command: the ResNet paper's recipe, a best checkpoint by validation accuracy,
and a history that records per-stage gradient norms (the gradient-flow view of why residual
networks train). Over 400 lines: the recipe, its schedule, distributed launch and resume are
one loop, read top to bottom like the paper's."""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torchvision.transforms import v2

from .artifacts import ensure_writable_dir, write_json_atomic
from .data import Preprocess, Source, batches, check_classes, open_data
from .errors import BadInput, whole
from .runtime.gpu import resolve_device
from .metrics import Accuracy
from .zoo import (ModelCard, load_state_strict, read_checkpoint, torchvision_state,
                  save_checkpoint, variant)

DEFAULT_EPOCHS = {"digits": 30, "cifar10": 30, "imagefolder": 10}
DEFAULT_BATCH = 128
MIN_STEPS = 8  # SGD steps an epoch below which a fitted batch is halved (to 8 at the least)
FEW_STEPS = 4  # below this a given --batch-size is warned about
VAL_FRACTION = 0.1


@dataclass
class TrainConfig:
    arch: str
    dataset: str
    out: Path
    epochs: int | None = None
    batch_size: int | None = None  # fit_batch: 128, or fewer on a small training set
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float | None = None
    schedule: str = "cosine"
    warmup_epochs: float | None = None
    label_smoothing: float = 0.0
    pretrained: str | None = None
    seed: int = 0
    device: str = "auto"
    resume: Path | None = None
    plot: bool = False
    workers: int | None = None
    weights_dir: Path | None = None  # torchvision files for --pretrained, offline
    limit: int | None = None  # train on the first N training images: a quick run-through

    def validated(self) -> "TrainConfig":
        kind = self.dataset.partition(":")[0]
        epochs = DEFAULT_EPOCHS.get(kind, 10) if self.epochs is None else self.epochs
        if epochs < 1:
            raise BadInput(f"--epochs must be at least 1, got {epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise BadInput(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise BadInput(f"--limit must be at least 1, got {self.limit}")
        if self.lr <= 0:
            raise BadInput(f"--lr must be positive, got {self.lr}")
        if self.schedule not in ("cosine", "step"):
            raise BadInput(f"--schedule must be cosine or step, got {self.schedule!r}")
        resolve_device(self.device)
        # Goyal et al.: linear warm-up when the batch outgrows the paper's 256.
        warmup = ((5.0 if (self.batch_size or 0) > 256 else 0.0) if self.warmup_epochs is None
                  else self.warmup_epochs)
        return TrainConfig(**{**asdict(self), "epochs": epochs, "warmup_epochs": warmup})


@dataclass
class Splits:
    train: Source
    train_indices: list[int]
    val: Source
    val_indices: list[int]
    test: Source | None


def open_splits(spec: str, input_shape: tuple[int, int, int]) -> Splits:
    """Train/val/test from one dataset spec: the dataset's own val split where it has one, else
    a seeded 10% of train held out; its test split where it has one."""
    kind, _, arg = spec.partition(":")
    if kind == "imagefolder":
        root = Path(arg).expanduser()
        if (root / "train").is_dir():
            train = open_data(f"imagefolder:{root / 'train'}")
            val = open_data(f"imagefolder:{root / 'val'}") if (root / "val").is_dir() else None
            test = open_data(f"imagefolder:{root / 'test'}") if (root / "test").is_dir() else None
        else:
            train, val, test = open_data(spec), None, None
    elif kind in ("digits", "cifar10"):
        if arg:
            raise BadInput(f"train takes the whole dataset ({kind}), not a split; drop ':{arg}'")
        train = open_data(f"{kind}:train")
        val = open_data(f"{kind}:val") if "val" in train.splits else None
        test = open_data(f"{kind}:test")
    else:
        train, val, test = open_data(spec, input_shape=input_shape), None, None
    if not train.has_labels:
        raise BadInput(f"{spec} has no labels; training needs a labelled dataset")
    indices = list(range(len(train)))
    if val is not None:
        return Splits(train, indices, val, list(range(len(val))), test)
    order = np.random.default_rng(0).permutation(len(train)).tolist()
    n_val = max(1, int(len(train) * VAL_FRACTION))
    return Splits(train, sorted(order[n_val:]), train, sorted(order[:n_val]), test)


def augmentation(preprocess: Preprocess, mirror_ok: bool) -> v2.Compose:
    size = preprocess.input_size
    crop = (v2.RandomCrop(size, padding=size // 8) if size <= 64
            else v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True))
    return v2.Compose([crop, *([v2.RandomHorizontalFlip()] if mirror_ok else [])])


def stage_of(param_name: str) -> str:
    head = param_name.split(".")[0]
    return head if head.startswith("layer") or head == "fc" else "stem"


def gradient_norms(model: nn.Module) -> dict[str, float]:
    squares: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            stage = stage_of(name.removeprefix("module."))
            squares[stage] = squares.get(stage, 0.0) + float(p.grad.detach().pow(2).sum())
    return {k: math.sqrt(v) for k, v in squares.items()}


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 0.1 ** sum(progress >= m for m in (0.5, 0.75))


@torch.inference_mode()
def evaluate(model: nn.Module, source: Source, preprocess: Preprocess, *, indices=None,
             batch_size: int = 256, device: str = "cpu", workers: int | None = None) -> Accuracy:
    model.eval()
    acc = Accuracy()
    for x, y in batches(source, preprocess, batch_size, indices=indices, workers=workers):
        acc.update(model(x.to(device)).float().cpu().numpy(), y.numpy())
    return acc


def evaluate_checkpoint(checkpoint: str | Path, data_spec: str | None = None, *, arch: str | None = None,
                        batch_size: int = 32, device: str = "auto") -> dict:
    """Top-1 and top-5 of a checkpoint in PyTorch through its card's Preprocess, on `data_spec`
    (labelled; a subset of the model's classes is fine; None: the test split of the built-in
    set it was trained on): what `eval --json` writes."""
    from .data import data_for, match_classes
    from .zoo import load_checkpoint
    if not (whole(batch_size) and batch_size >= 1):
        raise BadInput(f"--batch-size must be at least 1, got {batch_size!r}")
    model, card = load_checkpoint(checkpoint, arch=arch)
    data_spec = data_for(card, "test", data_spec, "--data")
    source = open_data(data_spec, input_shape=card.preprocess.input_shape)
    if not source.has_labels:
        raise BadInput(f"{data_spec} has no labels, so accuracy cannot be measured")
    match_classes(source, card.num_classes, card.class_names, f"{checkpoint} ({card.arch})")
    device = resolve_device(device)
    acc = evaluate(model.to(device), source, card.preprocess, batch_size=batch_size, device=device)
    return {"checkpoint": str(checkpoint), "arch": card.arch, "classes": card.num_classes,
            "data": data_spec, "images": acc.images,
            "top1": acc.top1, "top5": acc.top5, "device": device}


@dataclass
class TrainResult:
    model_path: Path
    card: ModelCard
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    is_main: bool = True  # False on the other ranks of a torchrun launch


def fit_batch(given: int | None, images: int) -> tuple[int, str | None]:
    """(batch size, what to say about it) for a training set of `images` (on one process). Left
    out: 128, halved while an epoch would be fewer than MIN_STEPS steps (a few hundred photos
    at 128 were one SGD step an epoch, and 3 epochs trained nothing). Given: larger than the
    set is refused with the fix; fewer than FEW_STEPS steps an epoch is said."""
    if given is None:
        size = DEFAULT_BATCH
        while size > 8 and math.ceil(images / size) < MIN_STEPS:
            size //= 2
        if size == DEFAULT_BATCH:
            return size, None
        return size, (f"{images} training images: batch size {size}, {_steps(images, size)} an epoch "
                      f"({DEFAULT_BATCH} would be {math.ceil(images / DEFAULT_BATCH)}); give "
                      "--batch-size to choose")
    if given > images:
        fitted, _ = fit_batch(None, images)
        raise BadInput(f"--batch-size {given} is more than the {images} training images, so an epoch "
                       f"would be one SGD step and little would be learnt; give --batch-size "
                       f"{fitted} (or leave it out: it is fitted to the set)")
    if math.ceil(images / given) < FEW_STEPS:
        return given, (f"--batch-size {given} on {images} training images is {_steps(images, given)} "
                       "an epoch: too few to learn much; a smaller batch gives more")
    return given, None


def _steps(images: int, batch: int) -> str:
    steps = math.ceil(images / batch)
    return f"{steps} SGD step{'s' if steps != 1 else ''}"


def train(config: TrainConfig, *, on_epoch: Callable[[dict], None] = lambda row: None,
          progress: Callable[[int, int, dict], None] = lambda done, total, stats: None,
          notice: Callable[[str], None] = lambda message: None) -> TrainResult:
    """Train `config.arch` on `config.dataset`; writes model.pt, last.pt and history.json.

    Resuming continues the saved schedule. Extending a finished schedule (more --epochs than
    it planned) is a warm restart: the added epochs run their own schedule from a tenth of
    --lr down to 0; extending an unfinished one recomputes it over the new length. Either way
    `notice` says what the learning rate will do before the first step."""
    config = config.validated()
    v = variant(config.arch)
    splits = open_splits(config.dataset, v.default_preprocess.input_shape)
    if config.limit is not None:
        splits.train_indices = splits.train_indices[:config.limit]
    num_classes = splits.train.num_classes
    resume_state = _read_resume(config.resume, v.name) if config.resume else None

    model, preprocess, start = _initial_model(v, num_classes, config.pretrained, config.weights_dir)
    # what the checkpoint's card says it is: trained here, from where it started
    weights = f"trained with resnet-edge on {config.dataset} from {start}"
    if resume_state is not None:
        card = ModelCard.from_dict(resume_state["card"])
        check_classes(splits.train, card.num_classes, f"the resumed {card.arch} model")
        preprocess = card.preprocess
        load_state_strict(model, resume_state["state_dict"], v.name, config.resume)
    out = ensure_writable_dir(config.out)

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = resolve_device(config.device)
    rank = 0
    if distributed:
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend)
        rank = dist.get_rank()
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            device = f"cuda:{torch.cuda.current_device()}"
    _seed_everything(config.seed + rank)
    model = model.to(device)
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    net = nn.parallel.DistributedDataParallel(model) if distributed else model

    weight_decay = config.weight_decay if config.weight_decay is not None else (
        5e-4 if preprocess.input_size <= 64 else 1e-4)
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=weight_decay, nesterov=False)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    per_process = math.ceil(len(splits.train_indices) / (dist.get_world_size() if distributed else 1))
    batch_size, said = fit_batch(config.batch_size, per_process)
    config = replace(config, batch_size=batch_size)  # history.json records the batch that ran
    if said and rank == 0:
        notice(said)
    steps_per_epoch = math.ceil(per_process / batch_size)
    schedule = {"epochs": config.epochs, "start_epoch": 0, "peak": 1.0, "schedule": config.schedule}
    if resume_state is not None:
        schedule = _continued_schedule(resume_state, config, notice)
    segment = (config.epochs - schedule["start_epoch"]) * steps_per_epoch
    first_step = schedule["start_epoch"] * steps_per_epoch
    warmup_steps = int(config.warmup_epochs * steps_per_epoch) if first_step == 0 else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: schedule["peak"] * lr_factor(max(0, s - first_step), segment,
                                                          warmup_steps, schedule["schedule"]))
    augment = augmentation(preprocess, splits.train.mirror_ok)

    history, best, start_epoch = [], -1.0, 0
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scheduler.base_lrs = [config.lr for _ in optimizer.param_groups]  # --lr is the peak
        for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
            group["lr"] = config.lr * factor(scheduler.last_epoch)  # the next step's, as said
        torch.set_rng_state(resume_state["rng"])
        history = resume_state["history"]
        best = max((row["val_top1"] for row in history), default=-1.0)
        start_epoch = len(history)

    card = ModelCard(v.name, num_classes, preprocess, class_names=splits.train.class_names,
                     weights=weights)
    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        sampler = None
        if distributed:
            sampler = torch.utils.data.DistributedSampler(splits.train_indices, seed=config.seed)
            sampler.set_epoch(epoch)
        loader = batches(splits.train, preprocess, batch_size, indices=splits.train_indices,
                         shuffle=True, seed=config.seed + epoch, augment=augment,
                         workers=config.workers, sampler=sampler)
        report = ((lambda done, stats: progress(done, steps_per_epoch,
                                                {"epoch": epoch + 1, "epochs": config.epochs, **stats}))
                  if rank == 0 else (lambda done, stats: None))
        row = _train_one_epoch(net, model, loader, optimizer, scheduler, criterion, device, report)
        val = evaluate(model, splits.val, preprocess, indices=splits.val_indices, device=device,
                       workers=config.workers)
        row.update(epoch=epoch + 1, val_top1=val.top1, val_top5=val.top5)
        history.append(row)
        if rank == 0:
            if val.top1 >= best:  # ties go to the later, more annealed epoch
                best = val.top1
                card.metrics = {"val_top1": val.top1, "val_top5": val.top5, "best_epoch": epoch + 1,
                                "dataset": config.dataset}
                save_checkpoint(out / "model.pt", model, card)
            save_checkpoint(out / "last.pt", model, card, optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), rng=torch.get_rng_state(),
                            history=history, schedule=schedule)
            write_json_atomic(out / "history.json", {"config": _plain_config(config),
                                                     "epochs": history})
            on_epoch(row)
    seconds = time.perf_counter() - started

    if rank == 0:
        best_state, card_dict = read_checkpoint(out / "model.pt")
        card = ModelCard.from_dict(card_dict)
        model.load_state_dict(best_state)
        if splits.test is not None:
            test = evaluate(model, splits.test, preprocess, device=device, workers=config.workers)
            card.metrics.update(test_top1=test.top1, test_top5=test.top5)
            save_checkpoint(out / "model.pt", model.cpu(), card)
        write_json_atomic(out / "history.json", {"config": _plain_config(config),
                                                 "epochs": history, "final": card.metrics,
                                                 "train_seconds": seconds})
        if config.plot:
            plot_history(history, out / "training.png", f"{config.arch} on {config.dataset}")
    if distributed:
        dist.destroy_process_group()
    return TrainResult(out / "model.pt", card, history, seconds, is_main=rank == 0)


def _train_one_epoch(net, model, loader, optimizer, scheduler, criterion, device, report) -> dict:
    net.train()
    seen = correct = 0
    loss_sum = 0.0
    norms_sum: dict[str, float] = {}
    steps = 0
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if device.startswith("cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        logits = net(x)
        loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for stage, norm in gradient_norms(model).items():
            norms_sum[stage] = norms_sum.get(stage, 0.0) + norm
        optimizer.step()
        scheduler.step()
        steps += 1
        seen += len(y)
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        elapsed = time.perf_counter() - start
        report(steps, {"loss": loss_sum / seen, "acc": correct / seen,
                       "images_per_s": seen / max(elapsed, 1e-9)})
    elapsed = time.perf_counter() - start
    return {"loss": loss_sum / max(seen, 1), "train_top1": correct / max(seen, 1),
            "lr": optimizer.param_groups[0]["lr"], "images_per_s": seen / max(elapsed, 1e-9),
            "seconds": elapsed, "grad_norm": {k: v / max(steps, 1) for k, v in norms_sum.items()}}


def _initial_model(v, num_classes: int, pretrained: str | None, weights_dir=None):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = v.build(num_classes)
    if not pretrained:
        return model, v.default_preprocess, "random init (seed 0)"
    weights = v.resolve_weights(pretrained)
    full, _ = torchvision_state(v, weights, weights_dir, instead="training without --pretrained")
    state = {k: t for k, t in full.items() if not k.startswith("fc.")}
    model.load_state_dict({**model.state_dict(), **state})  # everything but the new head
    return (model, Preprocess.from_torchvision(weights.transforms()),
            f"torchvision:{weights} (fine-tuned, new {num_classes}-class head)")


RESTART_FRACTION = 0.1  # a warm restart's peak, as a fraction of --lr


def _continued_schedule(state: dict, config: TrainConfig, notice) -> dict:
    """How the learning rate goes on from a resumed run (see `train`)."""
    done = len(state["history"])
    # last.pt files from before schedules were recorded: taken as the same plan continued
    saved = state.get("schedule") or {"epochs": config.epochs, "start_epoch": 0, "peak": 1.0,
                                      "schedule": config.schedule}
    if config.epochs <= done:
        raise BadInput(f"the resumed run has already trained {done} epochs; ask for more with "
                       f"--epochs (more than {done})")
    if config.epochs == saved["epochs"]:
        return saved
    if done >= saved["epochs"]:
        peak = RESTART_FRACTION
        notice(f"the resumed run finished its {saved['epochs']}-epoch {saved['schedule']} schedule; "
               f"epochs {done + 1}-{config.epochs} restart the learning rate at "
               f"{config.lr * peak:.3g} (a tenth of --lr {config.lr:g}) and take it down to 0 "
               f"on a {config.schedule} schedule (a warm restart)")
        return {"epochs": config.epochs, "start_epoch": done, "peak": peak, "schedule": config.schedule}
    notice(f"the resumed run stopped at epoch {done} of {saved['epochs']}; its {saved['schedule']} "
           f"schedule is stretched over {config.epochs} epochs, so the learning rate goes on from "
           "where that longer schedule is at epoch " f"{done + 1}")
    return {**saved, "epochs": config.epochs}


def _read_resume(path: Path, arch: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"resume file {path} not found; give the last.pt of an earlier run")
    state, card = read_checkpoint(path)
    if card is None:
        raise BadInput(f"{path} is not a resnet-edge training checkpoint; resume from last.pt")
    if card["arch"] != arch:
        raise BadInput(f"{path} is a {card['arch']} run, not {arch}; resume with the same arch")
    full = torch.load(path, map_location="cpu", weights_only=True)
    if "optimizer" not in full:
        raise BadInput(f"{path} holds weights only; resume from the run's last.pt")
    return {**full, "state_dict": state}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _plain_config(config: TrainConfig) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}


def plot_history(history: list[dict], path: Path, title: str) -> None:
    """Loss, accuracy (%), learning rate and per-stage gradient norms by epoch, the best
    validation epoch marked in each: the epoch model.pt holds."""
    import matplotlib

    from .artifacts import atomic_path
    from .pictures import literal, pyplot
    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    best = max(history, key=lambda row: (row["val_top1"], row["epoch"]))  # ties: the later one
    fig, ((ax_acc, ax_loss), (ax_lr, ax_grad)) = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    fig.suptitle(f"{literal(title)}: best validation top-1 {best['val_top1']:.2%} at epoch {best['epoch']} "
                 "(saved as model.pt)", fontweight="bold")
    ax_acc.plot(epochs, [row["train_top1"] * 100 for row in history], marker=".", label="train")
    ax_acc.plot(epochs, [row["val_top1"] * 100 for row in history], marker=".", label="validation")
    ax_acc.scatter([best["epoch"]], [best["val_top1"] * 100], s=120, facecolors="none",
                   edgecolors="#cf222e", linewidths=2, zorder=3, label="best (model.pt)")
    ax_acc.set(title="top-1 accuracy", ylabel="top-1 (%)")
    ax_acc.legend(loc="lower right")
    ax_loss.plot(epochs, [row["loss"] for row in history], marker=".")
    ax_loss.set(title="training loss", ylabel="cross-entropy (mean per image)")
    ax_lr.plot(epochs, [row["lr"] for row in history], marker=".")
    ax_lr.set(title="learning rate", ylabel="learning rate at the end of the epoch", xlabel="epoch")
    for stage in history[0]["grad_norm"]:
        ax_grad.plot(epochs, [row["grad_norm"].get(stage, float("nan")) for row in history],
                     label=stage)
    ax_grad.set(title="gradient L2 norm per stage", ylabel="L2 norm (mean per step, log scale)",
                xlabel="epoch", yscale="log")
    ax_grad.legend(fontsize=8)
    ax_lr.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # shared x
    for ax in (ax_acc, ax_loss, ax_lr, ax_grad):
        ax.axvline(best["epoch"], color="#cf222e", lw=1, ls="--", alpha=0.6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "open_splits"]
