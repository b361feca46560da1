"""Callbacks: per-epoch summary with throughput, device-aware speed settings, preemption, prediction writer."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import warnings
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from PIL import Image


class EpochSummary(L.Callback):
    """Shows training throughput (images/s) on the progress bar and prints one line per epoch:
    ``epoch 3 | train/loss 0.214 | val/mIoU 0.8123 | 12.4 s train | 412 img/s | 1.3 s val``.

    Throughput counts training time only (validation inside the epoch is timed apart; the sanity check before the
    first epoch is not counted).
    """

    def __init__(self) -> None:
        self.on_train_epoch_start()

    def on_train_epoch_start(self, *args: Any) -> None:
        self._start, self._images, self._val_seconds = time.perf_counter(), 0, 0.0
        self._val_start: Optional[float] = None
        self._validated = False

    def _train_seconds(self) -> float:
        return time.perf_counter() - self._start - self._val_seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        self._images += len(batch["image"]) * trainer.world_size
        elapsed = self._train_seconds()
        if elapsed > 0:
            pl_module.log("train/img_per_s", self._images / elapsed, prog_bar=True, on_step=True, on_epoch=False,
                          rank_zero_only=True, batch_size=len(batch["image"]))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_start is not None:
            self._val_seconds += time.perf_counter() - self._val_start
            self._val_start = None
            self._validated = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = self._train_seconds()
        metrics = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch}"]
        keys = ("train/loss_epoch", "val/loss", "val/mIoU", "val/pixel_accuracy") if self._validated else \
            ("train/loss_epoch",)  # no validation this epoch: the last one's values would look current
        for key in keys:
            if key in metrics:
                parts.append(f"{key.replace('_epoch', '')} {float(metrics[key]):.4f}")
        parts += [f"{elapsed:.1f} s train", f"{self._images / max(elapsed, 1e-9):.0f} img/s"]
        if self._validated:
            parts.append(f"{self._val_seconds:.1f} s val")
        rank_zero_info(" | ".join(parts))


class DeviceSpeedups(L.Callback):
    """Speed settings that help on CUDA; on CPU whether channels_last pays depends on the CPU (slower on an earlier
    VM, 0.88x the train time on an AMD EPYC VM), so it stays a choice there.

    ``channels_last="auto"`` turns it on only on CUDA; ``compile=True`` compiles the network in place with
    ``torch.compile`` (state-dict keys unchanged), and a string picks the ``torch.compile`` backend (``"inductor"``,
    or ``"aot_eager"``/``"eager"`` to debug). On CUDA, TF32 matmuls and convolutions are allowed.
    Both are applied in ``setup``, before Lightning wraps the module for DDP (changing parameter strides after
    wrapping breaks DDP's gradient buckets). ``cudnn.benchmark`` is left to the Trainer's ``benchmark`` and
    ``deterministic`` flags.
    """

    def __init__(self, channels_last: Union[str, bool] = "auto", compile: Union[bool, str] = False) -> None:
        if channels_last not in ("auto", True, False):
            raise ValueError(f"callbacks.speed.channels_last must be auto, true or false, got {channels_last!r}")
        self.channels_last, self.compile = channels_last, compile

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.setup_module(pl_module, trainer.strategy.root_device)

    def setup_module(self, pl_module: L.LightningModule, device: torch.device) -> None:
        """Apply the settings for ``device`` (also used outside a Trainer)."""
        cuda = device.type == "cuda"
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        use_cl = cuda if self.channels_last == "auto" else bool(self.channels_last)
        if use_cl:
            pl_module.to(memory_format=torch.channels_last)
        pl_module.channels_last = use_cl
        if self.compile and not getattr(pl_module.net, "_segkit_compiled", False):
            pl_module.net.compile(**({"backend": self.compile} if isinstance(self.compile, str) else {}))
            pl_module.net._segkit_compiled = True


# Lightning's warning for a mid-epoch checkpoint; Preemption makes that resume exact, so it would only mislead.
_MID_EPOCH_WARNING = "You're resuming from a checkpoint that ended before the epoch ended"


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where the run's ``last.ckpt`` goes: the unmonitored ``ModelCheckpoint`` named ``last`` of the callbacks
    config, else ``<default_root_dir>/checkpoints/last.ckpt`` (what ``ckpt_path=last|auto`` resumes)."""
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "monitor", None) is None and getattr(cb, "filename", None) == "last" and cb.dirpath:
            return Path(cb.dirpath) / "last.ckpt"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class Preemption(L.Callback):
    """A run stopped from outside loses nothing, and a resumed one ends like an uninterrupted one.

    - SIGTERM (``kill``, Kubernetes evicting a pod, a scheduler's preemption, torchrun stopping its workers) and
      SIGUSR1 (SLURM's ``#SBATCH --signal=SIGUSR1@90``) only set a flag. At the end of the next training batch that
      closes an optimiser step, the ranks agree (an all-reduce: a signal to any rank stops them all, at the same
      step), write that step to ``last.ckpt`` and exit with status 143. Under SLURM, SIGUSR1 also requeues the job
      (``scontrol requeue``, ``requeue: auto``), as Lightning's own SLURM handler does, but at a step boundary instead
      of inside the signal handler, where the weights may be half updated. DataLoader workers ignore both signals
      (a process-group signal would otherwise kill them under the main process, losing the checkpoint).
    - Resuming (``ckpt_path=auto`` or ``last``): the loader is restarted on the checkpoint's epoch (Lightning builds
      the first iterator before restoring the epoch, so with workers the sampler would replay epoch 0's order), and
      a checkpoint written mid-epoch trains on the rest of that epoch only: segkit's sampler order depends on (seed,
      epoch, rank) alone, so the samples already seen are left out and the next ones come with the augmentations
      they would have had.
    """

    def __init__(self, requeue: Union[bool, str] = "auto") -> None:
        if requeue not in ("auto", True, False):
            raise ValueError(f"callbacks.preemption.requeue must be auto, true or false, got {requeue!r}")
        self.requeue = requeue
        self.received: Optional[str] = None
        self._training = False
        self._pid = os.getpid()
        self._previous: dict = {}
        self._saved_world_size: Optional[int] = None
        self._trainer: Optional[L.Trainer] = None

    # -- signals ----------------------------------------------------------------------------------------------
    def _install(self, signums: Sequence[int]) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in signums:
            previous = signal.signal(signum, self._on_signal)
            self._previous.setdefault(signum, previous)

    def _restore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, previous in self._previous.items():
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked process that kept the handler (DataLoader workers ignore both)
            return
        if self.received is None:
            self.received = signal.Signals(signum).name
            launcher = self._trainer.strategy.launcher if self._trainer is not None else None
            if launcher is not None:  # ranks Lightning started as subprocesses of this one: pass the notice on
                launcher.kill(signal.SIGTERM)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.received, self._training, self._pid, self._trainer = None, False, os.getpid(), trainer
        # SIGUSR1's default action ends the process: catch it from here on (Lightning then leaves its own SLURM
        # SIGUSR1 handler out, seeing one installed); SIGTERM is Lightning's until training starts
        self._install([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning installed its SIGTERM handler (which broadcasts from inside the handler): ours only flags
        self._install([s for s in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s is not None])
        self._training = True
        self._restart_loader(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        at_step = (batch_idx + 1) % max(1, int(trainer.accumulate_grad_batches)) == 0 or \
            trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if not at_step:  # accumulated gradients are not in a checkpoint: stop where an optimiser step ends
            return
        if trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            self.received = self.received or "a signal to another rank"
            raise SIGTERMException()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        try:
            if isinstance(exception, SIGTERMException) and self._training and trainer.state.fn == "fit":
                self._save(trainer)
            job = slurm_job_id()
            if (trainer.is_global_zero and self.received == "SIGUSR1" and job
                    and self.requeue in ("auto", True)):
                requeue_slurm_job(job)
        finally:
            self._restore()  # Lightning calls no teardown hook after an exception

    def _save(self, trainer: L.Trainer) -> None:
        received = self.received or "SIGTERM"
        path = last_checkpoint_path(trainer)
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        try:
            trainer.save_checkpoint(path)  # every rank takes part; rank 0 writes (atomically: AtomicCheckpointIO)
        except Exception as exc:  # a rank already gone (a lost machine)
            rank_zero_warn(f"{received}: {path} may not have been written at {where} ({type(exc).__name__}: {exc});"
                           " a resumed run starts from the last checkpoint that was")
            return
        rank_zero_info(f"{received}: stopped at {where}; checkpoint written to {path}. Continue with the same "
                       f"command and ckpt_path=auto (hydra.run.dir={path.parent.parent})")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._restore()
            self._training, self._trainer = False, None

    # -- resuming ---------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["segkit_world_size"] = int(trainer.world_size)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._saved_world_size = checkpoint.get("segkit_world_size")

    def _restart_loader(self, trainer: L.Trainer) -> None:
        from segkit.data.sampling import SeededSampler

        loop = trainer.fit_loop
        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        pending = getattr(loop, "_combined_loader_states_to_load", None)
        if trainer.ckpt_path is not None and pending and loop._combined_loader is not None:
            # a stateful loader (data=streaming: litdata's, which saves its position). Lightning loads its state when
            # it builds the loader after the restore, but the scheduler's trainer.estimated_stepping_batches built it
            # before, so the state was never loaded and a resumed run started the epoch over, one epoch's order
            # behind. Load it now and remake the iterator from it.
            loop._combined_loader._load_state_dicts(pending)
            loop._combined_loader_states_to_load = []
            iter(loop._data_fetcher)
            return
        if trainer.ckpt_path is None or not isinstance(sampler, SeededSampler):  # not a resumed run
            return
        epoch = loop.epoch_progress.current.processed
        sampler.set_epoch(epoch)
        done = 0
        if loop.restarted_mid_epoch:
            done = loop.epoch_loop.batch_progress.current.completed
            done += 1 if loop.epoch_loop.restarted_on_train_batch_end else 0
        if 0 < done < trainer.num_training_batches:
            if self._saved_world_size not in (None, trainer.world_size):
                rank_zero_warn(f"resume: the checkpoint was written by {self._saved_world_size} processes, this run "
                               f"has {trainer.world_size}; the rest of epoch {epoch} is drawn for {trainer.world_size} "
                               "(a few samples of that epoch may be seen twice or not at all)")
            sampler.resume(epoch, done * int(loader.batch_size))
            warnings.filterwarnings("ignore", message=_MID_EPOCH_WARNING)
            rank_zero_info(f"resume: epoch {epoch} was interrupted after {done} batches; its remaining batches "
                           "follow, in the order and with the augmentations of an uninterrupted run")
        # Lightning made the epoch's iterator before the checkpoint's epoch was known (fit_loop.setup_data); with
        # workers it has already drawn indices from the sampler. Make it again, as Lightning does at each epoch.
        iter(loop._data_fetcher)


def slurm_job_id() -> Optional[str]:
    """This SLURM job's id as ``scontrol requeue`` takes it (``<array job>_<task>`` for an array task), or None."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        return f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID") or None


def requeue_slurm_job(job: str) -> None:
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        rank_zero_warn(f"SLURM job {job} not requeued: scontrol failed ({exc}); resubmit it with the same command")
        return
    if result.returncode == 0:
        rank_zero_info(f"SLURM job {job} requeued; it resumes from the checkpoint with ckpt_path=auto")
    else:
        rank_zero_warn(f"SLURM job {job} not requeued (scontrol: {result.stderr.strip() or result.returncode}); "
                       "resubmit it with the same command")


class MaskWriter(BasePredictionWriter):
    """Writes each predicted mask as a palette PNG of class indices and a colour overlay on the input image."""

    def __init__(self, output: Union[str, Path], palette: Sequence[Sequence[int]], alpha: float = 0.5) -> None:
        super().__init__(write_interval="batch")
        self.output, self.alpha = Path(output), float(alpha)
        self.palette = np.array(palette, dtype=np.uint8)
        self.flat = [c for colour in palette for c in colour][:768]
        self.flat += [0] * (768 - len(self.flat))
        self.written: List[Path] = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        for i, (name, mask) in enumerate(zip(prediction["name"], prediction["mask"])):
            pred = mask.numpy()
            if pred.dtype == np.uint8:
                img = Image.fromarray(pred, mode="P")
                img.putpalette(self.flat)
            else:  # more than 256 classes: a 16-bit grayscale PNG of class indices
                img = Image.fromarray(pred.astype(np.uint16))
            img.save(self.output / f"{name}.png")
            h, w = pred.shape
            self.written.append(self.output / f"{name}.png")
            image = batch["image"][i, :, :h, :w].cpu()
            Image.fromarray(self.overlay(image, pred)).save(self.output / f"{name}_overlay.png")

    def overlay(self, image: torch.Tensor, pred: np.ndarray) -> np.ndarray:
        """The image as RGB (grayscale repeated, first three bands of N-band images) blended with class colours."""
        x = image.float().numpy().transpose(1, 2, 0)
        if image.dtype != torch.uint8:
            x = x * 255.0
        rgb = np.repeat(x[..., :1], 3, axis=2) if x.shape[-1] < 3 else x[..., :3]
        colours = self.palette[np.minimum(pred, len(self.palette) - 1)]
        return (rgb * (1 - self.alpha) + colours * self.alpha).round().clip(0, 255).astype(np.uint8)
