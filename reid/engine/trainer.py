"""The one training loop every method uses.

Order of work per epoch (the hooks a method can rely on):
  1. `method.on_epoch_start(trainer, epoch)` (e.g. ISP re-clusters its pseudo-labels),
  2. steps: batch -> `method.training_losses` -> sum -> NaN guard -> backward (AMP on CUDA) -> optimiser step,
  3. LR schedule step (per epoch, warm-up then multi-step or cosine),
  4. one CSV log row (loss terms, lr, time, images/s),
  5. checkpoint (atomic), so an interrupted run resumes from the last finished epoch with the same result.
At the end `model.pt` holds the student only (frozen teachers live outside the model and are never saved).
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from reid.data.dataset import ReIDDataset, label_maps
from reid.data.index import IndexRow, index_sha256, read_index, select
from reid.data.samplers import PKBatchSampler
from reid.data.workers import worker_init
from reid.device import autocast_dtype, resolve_device
from reid.methods.base import Method, build_method
from reid.progress import progress_interval
from reid.locking import exclusive_lock
from reid.serialization import CorruptFileError, UnsafeFileError, load_file, save_file

log = logging.getLogger(__name__)

MODEL_FORMAT = "reid-model/3"  # 2: loadable weights-only (RNG states and method state as tensors); 3: checksummed


@dataclass
class TrainConfig:
    """Shared trainer settings (params.yaml `train`, with per-method `train_presets` on top)."""

    epochs: int = 60
    batch_p: int = 16
    batch_k: int = 4
    input_size: tuple[int, int] = (256, 128)
    optimizer: str = "adam"
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9
    scheduler: str = "multistep"  # multistep | cosine
    milestones: tuple[int, ...] = (40, 70)
    gamma: float = 0.1
    min_lr_factor: float = 1e-3  # cosine floor, as a fraction of lr
    warmup_epochs: int = 10
    warmup_factor: float = 0.1
    flip_p: float = 0.5
    pad: int = 10
    erasing_p: float = 0.5
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # CUDA: float16 autocast + loss scaling
    cpu_amp: bool = False  # CPU: bfloat16 autocast where the CPU has native bf16 (1.5x a ResNet-18 epoch)
    grad_clip: float = 0.0
    sync_bn: bool = False  # multi-GPU: BatchNorm statistics over the global batch (nn.SyncBatchNorm)
    gpus: int = 1  # processes of one training job: > 1 makes Snakemake launch it with torchrun (DDP)
    extra: dict[str, Any] = field(default_factory=dict)

    # Values that make sense (checked by reid.pipeline.check wherever a TrainConfig is built): (min, max), None open.
    RANGES: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "epochs": (1, None), "batch_p": (1, None), "batch_k": (1, None), "input_size": (8, 4096), "lr": (0, None),
        "weight_decay": (0, None), "momentum": (0, 1), "milestones": (0, None), "gamma": (0, None),
        "min_lr_factor": (0, 1), "warmup_epochs": (0, None), "warmup_factor": (0, 1), "flip_p": (0, 1),
        "pad": (0, None), "erasing_p": (0, 1), "workers": (0, 256), "seed": (0, None), "grad_clip": (0, None),
        "gpus": (1, 1024)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "train") -> "TrainConfig":
        from reid.settings import check_config

        check_config(cls, d, where)
        kw = dict(d)
        for key in ("input_size", "milestones"):
            if key in kw:
                kw[key] = tuple(int(v) for v in kw[key])
        return cls(**kw)


def lr_factor(epoch: int, cfg: TrainConfig) -> float:
    """LR multiplier for an epoch: linear warm-up from warmup_factor, then multi-step decay or cosine."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_factor + (1.0 - cfg.warmup_factor) * epoch / cfg.warmup_epochs
    if cfg.scheduler == "multistep":
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    if cfg.scheduler == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1)
        t = (epoch - cfg.warmup_epochs) / span
        return cfg.min_lr_factor + (1 - cfg.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"unknown scheduler {cfg.scheduler!r} (multistep | cosine)")


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (adam | adamw | sgd)")


def open_caches(caches: Mapping[str, str | Path], index_path: str | Path) -> dict[str, Any]:
    """Open every named cache with a reader that refuses a cache built from another index."""
    from reid.cache.h5 import CacheReader

    return {name: CacheReader(path, index_path=index_path) for name, path in caches.items()}


def method_fields(method: Method, train: bool) -> list[str]:
    spec = method.caches if train else method.test_caches
    return [f"{teacher}.{f}" for teacher, fields in spec.items() for f in fields]


def filter_positions(method: Method, positions: list[int], caches: Mapping[str, Any]) -> list[int]:
    """Keep rows where the method's `require_field` (e.g. faces.has_face) is nonzero."""
    req = method.require_field
    if not req:
        return positions
    teacher, fld = req.split(".", 1)
    if teacher not in caches:
        raise KeyError(f"method {method.name} requires field {req}, but cache {teacher!r} was not given")
    values = caches[teacher].read(fld, positions) if hasattr(caches[teacher], "read") else [
        caches[teacher][i][fld] for i in positions
    ]
    return [p for p, v in zip(positions, values) if np.asarray(v).any()]


def _atomic_save(obj: Any, path: Path) -> None:
    save_file(obj, path, path.name)


def _collect_rng() -> dict[str, Any]:
    """RNG states as tensors and plain numbers, so the checkpoint loads weights-only (no pickled objects)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_dataset(method: Method, rows: list[IndexRow], root: str | Path, caches: Mapping[str, Any],
                  cfg: TrainConfig) -> ReIDDataset:
    """The training split as the trainer feeds it: the method's rows (`require_field`), contiguous labels, its
    cache fields and the train transform of `cfg` (also what benchmarks/bench_data_wait.py times)."""
    positions = select(rows, "train")
    if not positions:
        raise ValueError("the index has no train rows: this dataset is test-only; train on another dataset")
    train_rows = filter_positions(method, positions, caches)
    pid_labels, clothes_labels = label_maps(rows, train_rows)
    return ReIDDataset(
        rows, root, train_rows, cfg.input_size, train=True, caches=caches,
        fields=method_fields(method, train=True), image_field=method.image_field,
        pid_labels=pid_labels, clothes_labels=clothes_labels,
        flip_p=cfg.flip_p, pad=cfg.pad, erasing_p=cfg.erasing_p, rgb_augment=method.rgb_field_augment,
    )


class Trainer:
    """Trains one method on the train split of an index; see the module docstring for the hook order."""

    def __init__(
        self,
        method: Method,
        rows: list[IndexRow],
        root: str | Path,
        caches: Mapping[str, Any],
        out_dir: str | Path,
        cfg: TrainConfig,
        index_hash: str = "",
    ) -> None:
        self.method, self.rows, self.root, self.cfg = method, rows, Path(root), cfg
        self.caches = dict(caches)
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.index_hash = index_hash
        self.device = torch.device(resolve_device(cfg.device))
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.autocast_dtype = autocast_dtype(self.device.type, cfg.amp, cfg.cpu_amp)
        if cfg.cpu_amp and self.device.type == "cpu" and self.autocast_dtype is None:
            log.warning("train.cpu_amp: this CPU has no native bfloat16 (AMX / AVX512-BF16), so it trains in float32")

        self.train_set = train_dataset(method, rows, root, self.caches, cfg)
        self.train_rows = list(self.train_set.positions)
        self.pid_labels, self.clothes_labels = self.train_set.pid_labels, self.train_set.clothes_labels
        self.num_classes = len(self.pid_labels)
        self.epochs = cfg.epochs
        labels = [self.pid_labels[rows[i].pid] for i in self.train_rows]
        self.sampler = PKBatchSampler(labels, cfg.batch_p, cfg.batch_k, cfg.seed, self.rank, self.world_size)

        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.model = method.build_model(self.num_classes).to(self.device)
        # NHWC: what cuDNN's tensor cores and oneDNN's AMX bf16 kernels run fastest
        self.channels_last = self.device.type == "cuda" or self.autocast_dtype == torch.bfloat16
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ddp_model: nn.Module = self.model
        if self.world_size > 1:
            if cfg.sync_bn:
                if self.device.type != "cuda":
                    raise ValueError("train.sync_bn needs CUDA devices: torch's SyncBatchNorm does not run on CPU "
                                     "processes (set sync_bn: false)")
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            # the weights came from rank 0 (DDP broadcasts them); from here on each rank draws its own
            # augmentations and dropout masks, as independent GPUs of a larger batch would
            torch.manual_seed(self._rank_seed(cfg.seed))
            np.random.seed(self._rank_seed(cfg.seed) % 2**32)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: lr_factor(e, cfg))
        # loss scaling only for float16: bfloat16 has float32's exponent range
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []  # per-epoch log rows, also kept in the checkpoint

    def _rank_seed(self, seed: int) -> int:
        """A seed of this rank's own (rank 0 keeps `seed`, so one process runs exactly as without DDP)."""
        return seed + 1_000_003 * self.rank

    # --- loaders -----------------------------------------------------------------------------------------
    def _loader(self, epoch: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        gen = torch.Generator().manual_seed(self._rank_seed(self.cfg.seed * 7919 + epoch))
        return DataLoader(
            self.train_set, batch_sampler=self.sampler, num_workers=self.cfg.workers, generator=gen,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
            worker_init_fn=_seed_worker if self.cfg.workers else None,
        )

    def feature_loader(self, batch_size: int = 64) -> DataLoader:
        """The training rows with the test transform (for hooks that need the model's features)."""
        ds = ReIDDataset(
            self.rows, self.root, self.train_rows, self.cfg.input_size, train=False, caches=self.caches,
            fields=[f for f in self.train_set.fields if f not in self.train_set.overrides],
            image_field=self.method.image_field,
            pid_labels=self.pid_labels, clothes_labels=self.clothes_labels,
        )
        return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=self.cfg.workers,
                          worker_init_fn=worker_init)

    # --- checkpoints -------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def _fingerprint(self) -> str:
        return json.dumps(
            {"method": self.method.name, "params": self.method.params, "cfg": asdict(self.cfg),
             "index": self.index_hash, "rows": len(self.train_rows), "inputs": self._input_digests},
            sort_keys=True, default=str,
        )

    @functools.cached_property
    def _input_digests(self) -> dict[str, str]:
        """sha256 of each file the run reads under a name that stays when its content changes: the weights files
        its method parameters name and its caches. A checkpoint left by a run that started from another
        pretrain file (same path, other bytes) must not be resumed as this run's (it once was: a DeiT-S teacher
        interrupted after 8 epochs from one stand-in finished its 10 from another's checkpoint)."""
        from reid.hashing import file_sha256

        files = {f"params.{k}": v for k, v in self.method.params.items()
                 if isinstance(v, (str, Path)) and Path(v).is_file()}
        files |= {f"cache.{n}": getattr(c, "path", None) for n, c in self.caches.items()}
        return {k: file_sha256(p) for k, p in sorted(files.items()) if p and Path(p).is_file()}

    def _rank_rngs(self) -> list[dict[str, Any]]:
        """Every rank's RNG state (a collective under DDP): each rank's augmentations draw from its own
        stream, so a resumed rank must get its own state back, not rank 0's."""
        mine = _collect_rng()
        if self.world_size == 1:
            return [mine]
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, mine)
        return gathered

    def save_checkpoint(self, epoch: int) -> None:
        rngs = self._rank_rngs()
        if self.rank != 0:
            return
        _atomic_save(
            {"epoch": epoch, "fingerprint": self._fingerprint(), "history": self.history,
             "model": self.model.state_dict(),
             "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
             "scaler": self.scaler.state_dict(), "method_state": self.method.extra_state(), "rng": rngs[0],
             "rng_ranks": rngs},
            self.checkpoint_path,
        )

    def try_resume(self) -> bool:
        """Resume from `checkpoint.pt` when it belongs to this exact run; otherwise start fresh."""
        if not self.checkpoint_path.is_file():
            return False
        try:
            ckpt = load_file(self.checkpoint_path, "checkpoint", require_digest=True)
            if not isinstance(ckpt, dict) or "epoch" not in ckpt:
                raise CorruptFileError(f"{self.checkpoint_path}: not a training checkpoint of this project")
        except (UnsafeFileError, CorruptFileError) as exc:
            aside = self.checkpoint_path.with_name(f"{self.checkpoint_path.name}.unusable-{int(time.time())}")
            if self.rank == 0:
                os.replace(self.checkpoint_path, aside)
            log.warning("%s; moved it aside to %s and training starts from scratch", exc, aside)
            return False
        if ckpt.get("fingerprint") != self._fingerprint():
            log.warning("%s belongs to another configuration: starting from scratch", self.checkpoint_path)
            return False
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.method.load_extra_state(ckpt.get("method_state", {}))
        ranks = ckpt.get("rng_ranks") or [ckpt["rng"]]
        if len(ranks) == self.world_size:
            _restore_rng(ranks[self.rank])
        else:  # resumed on another number of processes: the run goes on, but not bit-identically
            _restore_rng(ranks[0])
            log.warning("%s was written by %d process(es), this run has %d: the augmentation streams restart "
                        "from rank 0's, so the result will not be bit-identical to an uninterrupted run",
                        self.checkpoint_path, len(ranks), self.world_size)
        self.start_epoch = ckpt["epoch"] + 1
        self.history = list(ckpt.get("history", []))
        log.info("resumed from %s after epoch %d", self.checkpoint_path, ckpt["epoch"])
        return True

    # --- loop ----------------------------------------------------------------------------------------------
    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device, non_blocking=True)
                if k == "image" and self.channels_last:
                    v = v.contiguous(memory_format=torch.channels_last)
            out[k] = v
        return out

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.method.on_epoch_start(self, epoch)
        self.model.train()
        sums: dict[str, float] = {}
        steps, images, t0 = 0, 0, time.perf_counter()
        loader = self._loader(epoch)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False, disable=self.rank != 0,
                   dynamic_ncols=True, mininterval=progress_interval())
        # time blocked waiting for the next batch (decode, cache reads, warps; in the workers when there are any):
        # each step below ends in a host sync (float(loss)), so this is time the device sat idle
        data_wait, batches = 0.0, iter(bar)
        while True:
            t_wait = time.perf_counter()
            batch = next(batches, None)
            data_wait += time.perf_counter() - t_wait
            if batch is None:
                break
            batch = self._to_device(batch)
            with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None):
                losses = self.method.training_losses(self.ddp_model, batch, epoch)
            total = sum(losses.values())
            if not self._all_finite(total):
                terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                last = (f"The last good checkpoint is {self.checkpoint_path} (epoch {epoch})"
                        if self.checkpoint_path.is_file() else "No epoch finished, so there is no checkpoint to resume")
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch + 1}, step {steps + 1} ({terms}). {last}; lower the "
                    "learning rate or check the caches for NaN values."
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            if self.cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["total"] = sums.get("total", 0.0) + float(total.detach())
            steps += 1
            images += len(batch["image"])
            bar.set_postfix(loss=f"{float(total.detach()):.3f}", refresh=False)  # drawn at the bar's interval
        if self.world_size > 1:  # the log reports the global batch: mean over ranks
            keys = list(sums)  # the same order on every rank (the method returns its terms in a fixed order)
            vec = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(vec)
            sums = dict(zip(keys, (vec / self.world_size).tolist()))
            images *= self.world_size
            self._check_ranks_agree(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, **{k: v / max(steps, 1) for k, v in sums.items()}, "lr": lr,
               "steps": steps, "seconds": seconds, "images_per_s": images / max(seconds, 1e-9),
               "data_wait_share": data_wait / max(seconds, 1e-9)}
        return row

    def _all_finite(self, total: torch.Tensor) -> bool:
        """Whether the step's loss is finite on every rank (one rank's NaN stops them all, none hangs)."""
        ok = torch.tensor([1.0 if bool(torch.isfinite(total)) else 0.0], device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        return bool(ok.item() == 1.0)

    def _check_ranks_agree(self, epoch: int) -> None:
        """DDP keeps one model: every rank must hold the same weights after each epoch (exact per-tensor sums).
        Buffers (BatchNorm running statistics) are left out: each rank updates them from its own shard and DDP
        broadcasts rank 0's at the next forward, which is also what model.pt stores."""
        mine = torch.stack([p.detach().double().sum() for p in self.model.parameters()]).to(self.device)
        gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
        torch.distributed.all_gather(gathered, mine)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError(f"DDP ranks hold different weights after epoch {epoch + 1}")
        if self.rank == 0:
            log.info("DDP: %d ranks hold identical weights after epoch %d", self.world_size, epoch + 1)

    def _barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def fit(self) -> Path:
        self.try_resume()
        log_path = self.out_dir / "train_log.csv"
        # the log rows come from the checkpoint: an orchestrator may have deleted the failed job's train_log.csv
        self.history = self.history[: self.start_epoch] or _read_log(log_path)[: self.start_epoch]
        for epoch in range(self.start_epoch, self.cfg.epochs):
            row = self.train_epoch(epoch)
            self.history.append(row)
            if self.rank == 0:
                _write_log(log_path, self.history)
                log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in row.items() if isinstance(v, float)})
            self.save_checkpoint(epoch)
            self._barrier()  # no rank runs ahead of the checkpoint it could be resumed from
        path = self.export()
        self._barrier()
        if self.rank == 0:  # the run is complete: a rerun (e.g. after a code change) trains anew, never re-exports
            self.checkpoint_path.unlink(missing_ok=True)
        return path

    def test_teachers(self) -> dict[str, dict[str, Any]]:
        """The auxiliary models the deployed model still needs at test time (DeSKPro's face detector), as they made
        the caches it trained on: teacher, backend, model file sha256 and parameters. `embed` / `search` rebuild
        them to run on new images, and refuse a different file."""
        names = set(self.method.test_caches) | {f.split(".")[0] for f in (self.method.image_field,
                                                                       self.method.require_field) if f}
        out: dict[str, dict[str, Any]] = {}
        for name in sorted(names):
            meta = getattr(self.caches.get(name), "meta", None)
            if meta is not None:
                out[name] = {"teacher": meta.teacher, "backend": meta.backend, "model_sha256": meta.model_sha256,
                             "params": dict(meta.params)}
        return out

    def export(self) -> Path:
        """Write `model.pt`: the student's weights and what inference needs to rebuild it (no teachers)."""
        path = self.out_dir / "model.pt"
        if self.rank == 0:
            _atomic_save(
                {"format": MODEL_FORMAT, "method": self.method.name, "method_module": type(self.method).__module__,
                 "method_params": self.method.params,
                 "num_classes": self.num_classes, "input_size": list(self.cfg.input_size),
                 "state_dict": self.model.state_dict(), "method_state": self.method.extra_state(),
                 "index_sha256": self.index_hash, "test_teachers": self.test_teachers()},
                path,
            )
        return path


def _seed_worker(worker_id: int) -> None:
    worker_init(worker_id)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: float(v) if k != "epoch" else int(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in history:
        keys += [k for k in r if k not in keys]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        for r in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    os.replace(tmp, path)


def train(
    method: str,
    method_params: Mapping[str, Any],
    index: str | Path,
    root: str | Path,
    out_dir: str | Path,
    caches: Mapping[str, str | Path] | None = None,
    train_cfg: Mapping[str, Any] | None = None,
) -> Path:
    """Train `method` on the index's train split and write `out_dir/model.pt` (+ checkpoint, train_log.csv)."""
    cfg = TrainConfig.from_dict(train_cfg or {})
    m = build_method(method, **dict(method_params))
    rows = read_index(index)
    opened = open_caches(caches or {}, index)
    if cfg.device == "auto" and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        cfg.device = f"cuda:{os.environ['LOCAL_RANK']}"
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    trainer = Trainer(m, rows, root, opened, out_dir, cfg, index_hash=index_sha256(index))
    log.info("training %s on %d images of %d ids, %d steps/epoch, device %s, autocast %s", method,
             len(trainer.train_rows), trainer.num_classes, len(trainer.sampler), trainer.device,
             str(trainer.autocast_dtype or "off").removeprefix("torch."))
    if trainer.rank != 0:
        return trainer.fit()
    with exclusive_lock(Path(out_dir) / "model.pt", "training"):  # one training per run folder
        return trainer.fit()
