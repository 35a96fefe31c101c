"""The one training loop, shared by the teacher, the students and the QLoRA student.

One optimizer step, top to bottom (:func:`train`):

1. take the step's batch of ``batch_size`` examples from the epoch's
   length-bucketed batch list (the same list on every rank) and cut it into
   ``world_size * grad_accum`` micro-batches; this rank runs its
   ``grad_accum`` of them, so ranks and accumulation never change the recipe;
2. count the items that the loss averages over in the *whole* step
   (``n_items``: examples, or valid tokens for a generative student), summed
   over all DDP ranks;
3. for each micro-batch: ``loss_fn(model, batch)`` returns the loss *summed*
   over its items; backward ``sum / n_items_step * world_size`` (DDP averages
   gradients over ranks, the factor undoes that), so accumulation and data
   parallelism leave the objective unchanged; trainable modules outside the
   model (``extra_modules``, e.g. hidden-state projections) are not wrapped
   in DDP, so their gradients are averaged over ranks explicitly, the same way;
4. unscale (fp16), clip the gradient norm, optimizer and scheduler step;
5. every ``eval_every`` steps and at each epoch end: evaluate (on rank 0, whose
   metric every rank takes, so all ranks pick the same best step and stop at the
   same step), keep the best checkpoint by the chosen validation metric, stop
   early after ``patience`` evaluations without improvement, and write ``last``
   for ``--resume``.

Throughput is counted over steps 1-4 only (evaluation and checkpoints left
out): examples and real (unpadded) input tokens of all ranks per second, and
the process's peak memory at the end (:attr:`TrainResult.throughput`). The
clock runs over each stretch of steps between evaluations and is read once
the device has finished their queued kernels.

The teacher is the case "loss_fn = cross-entropy"; a student's loss_fn runs the
frozen teacher (or reads its cached logits) inside.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_model

from kd.data.batching import TokenizedSet, collate, length_bucketed_batches, padding_fraction, split_batch, token_counts
from kd.errors import UsageError
from kd.train.checkpoint import (
    STATE_DIR,
    load_trainer_state,
    point_link,
    prune_checkpoints,
    restore_rng,
    save_trainer_state,
    write_checkpoint,
)
from kd.eval.measure import process_peak_memory_mib, synchronize
from kd.eval.report import write_json
from kd.train.distributed import (
    DistInfo,
    all_reduce_sum,
    average_gradients,
    barrier,
    broadcast_from_main,
    broadcast_parameters,
    gather_rng_states,
)
from kd.eval.metrics import SELECTION_METRICS

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

LossFn = Callable[[torch.nn.Module, dict], torch.Tensor]
"""``loss_fn(model, batch) -> loss summed over the batch's items`` (float32 scalar)."""


@dataclass
class TrainConfig:
    """Optimisation settings of one run (YAML section ``train``)."""

    epochs: int = 4
    batch_size: int = 32
    """Examples per optimizer step over all ranks (the global batch): each rank runs ``grad_accum``
    micro-batches of ``batch_size / (world_size * grad_accum)``, so torchrun keeps the recipe."""
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    """Linear warm-up over this share of all steps, then linear decay to 0."""
    max_grad_norm: float = 1.0
    precision: str = "auto"
    """``auto`` (bf16 autocast on CUDA and on CPUs with native bf16, fp32 on other CPUs),
    ``fp32``, ``bf16`` or ``fp16`` (with a GradScaler)."""
    eval_every: int = 0
    """Evaluate every this many optimizer steps (0: only at each epoch end)."""
    metric: str = "roc_auc"
    """Validation metric (higher is better) that picks the best checkpoint and drives early stopping.
    Threshold-free by default: the deployed threshold is tuned after training, not fixed at 0.5."""
    patience: int = 0
    """Stop after this many evaluations without improvement (0: never stop early)."""
    seed: int = 0
    log_every: int = 20
    max_steps: int = 0
    """Stop after this many optimizer steps (0: run all epochs)."""
    eval_batch_size: int = 256
    compile: bool = False
    """``torch.compile`` the model (pays off on GPU; shapes vary, so compiled with dynamic=True)."""

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.batch_size < 1 or self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must be a positive multiple of train.grad_accum ({self.grad_accum})"
            )
        if self.epochs < 1:
            raise ValueError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.metric not in SELECTION_METRICS:
            raise ValueError(f"train.metric must be one of {', '.join(SELECTION_METRICS)}, not {self.metric!r}")
        checks = {
            "lr": (math.isfinite(self.lr) and self.lr > 0, "a finite number > 0"),
            "weight_decay": (math.isfinite(self.weight_decay) and self.weight_decay >= 0, "a finite number >= 0"),
            "warmup_ratio": (0 <= self.warmup_ratio < 1, "in [0, 1)"),
            "max_grad_norm": (self.max_grad_norm > 0, "> 0 (inf: no clipping)"),
            "max_steps": (self.max_steps >= 0, ">= 0 (0: run all epochs)"),
            "eval_every": (self.eval_every >= 0, ">= 0 (0: at each epoch end)"),
            "patience": (self.patience >= 0, ">= 0 (0: never stop early)"),
            "log_every": (self.log_every >= 1, ">= 1"),
            "eval_batch_size": (self.eval_batch_size >= 1, ">= 1"),
            "seed": (0 <= self.seed < 2**32, "in [0, 2**32) (NumPy's seed range)"),
        }
        for key, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"train.{key} must be {expected}, got {getattr(self, key)}")


def check_batch_fits(cfg: TrainConfig, n_train: int) -> None:
    """Refuse a ``train.batch_size`` above the ``n_train`` training examples: every
    epoch would be one smaller batch, so the run would not train with the batch
    it records. Recipes call it right after the split, before a model is built."""
    if cfg.batch_size > n_train:
        raise UsageError(f"train.batch_size ({cfg.batch_size}) is larger than the training split ({n_train} examples); "
                         f"use a smaller batch or more data")


@dataclass
class TrainResult:
    best_metric: float
    best_step: int
    steps: int
    history: list = field(default_factory=list)
    stopped_early: bool = False
    throughput: dict = field(default_factory=dict)
    """``train_examples_seen``, ``train_tokens_seen`` (real input tokens, all ranks), ``train_step_seconds``,
    ``train_samples_per_s``, ``train_tokens_per_s`` (None before a step ran) over the steps this process ran,
    and ``peak_memory_mib`` (:func:`kd.eval.measure.process_peak_memory_mib`, this rank)."""


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""``/proc/cpuinfo`` flags of x86 CPUs whose matmuls run bf16 natively (AVX512-BF16, AMX)."""


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 matmuls natively (a flag of :data:`NATIVE_BF16_FLAGS`).

    Elsewhere bf16 is emulated through fp32 and slower than fp32 itself; a
    system without ``/proc/cpuinfo`` (not Linux) counts as without.
    """
    try:
        flags = {flag for line in Path(cpuinfo).read_text().splitlines() if line.startswith("flags")
                 for flag in line.partition(":")[2].split()}
    except OSError:
        return False
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32).

    ``auto`` is bf16 on CUDA and on CPUs with native bf16 (there a bf16 matmul
    runs about 4x the fp32 one and training about 3x faster), fp32 on other CPUs.
    """
    if precision == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def linear_warmup_decay(optimizer, warmup_steps: int, total_steps: int):
    """LR multiplier of optimizer step ``s`` (0-based; the scheduler steps once per optimizer step):

        (s + 1) / (warmup_steps + 1)                                  for s < warmup_steps
        max(0, (total_steps - s) / max(1, total_steps - warmup_steps))  otherwise

    a linear warm-up that never starts at 0 (the first step trains), 1 at
    ``warmup_steps``, then a linear decay that reaches 0 at ``total_steps``.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_optimizer(modules: list[torch.nn.Module], cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and norms."""
    decay, no_decay = [], []
    for module in modules:
        for name, param in module.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type == "cuda")


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def forward_backward(
    model: torch.nn.Module,
    loss_fn: LossFn,
    micro_batches: list[dict],
    *,
    dist_info: DistInfo = DistInfo(),
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    extra_params: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """Accumulate the gradients of one optimizer step; return its mean loss over
    all ranks' items (detached, the same on every rank).

    Each micro-batch's summed loss is divided by the item count of the whole
    step over all ranks, so the accumulated gradient equals that of one big
    batch, whatever the micro-batch sizes or padding. Under DDP each rank's
    backward carries ``world_size * local_sum / n_items``; DDP averages the
    model's gradients over ranks and ``extra_params`` (trainable parameters
    that ``loss_fn`` uses outside the DDP-wrapped model) are averaged here
    after the last micro-batch, so both end at ``global_sum / n_items``.
    """
    device = micro_batches[0]["input_ids"].device
    n_items = all_reduce_sum(sum(b["n_items"] for b in micro_batches).to(device, torch.float32), dist_info)
    total = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        if dist_info.enabled:
            # Synchronise gradients only on the last micro-batch (what no_sync() does, without a context).
            model.require_backward_grad_sync = i == len(micro_batches) - 1
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss_sum = loss_fn(model, batch)
        loss = loss_sum.float() / n_items * dist_info.world_size
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.detach()
    average_gradients(list(extra_params), dist_info)
    # Each rank's total is its share local_sum / n_items, times world_size.
    return all_reduce_sum(total, dist_info) / dist_info.world_size


def seconds_since(began: float, device: torch.device) -> float:
    """Seconds from ``began`` (a ``time.perf_counter()`` reading) until the work queued on
    ``device`` meanwhile is done: CUDA runs kernels after the host queued them, so the
    clock is read after :func:`kd.eval.measure.synchronize`."""
    synchronize(device)
    return time.perf_counter() - began


def log_window(writer, progress, window: dict, loss, grad_norm, scheduler, step: int, device: torch.device) -> dict:
    """Log the scalars of the steps since the last log (``window`` counts all ranks'
    examples and tokens); return a fresh window."""
    elapsed = seconds_since(window["time"], device)
    rate = window["examples"] / elapsed
    logged = {
        "train/loss": loss.item(),
        "train/lr": scheduler.get_last_lr()[0],
        "train/grad_norm": float(grad_norm),
        "train/samples_per_s": rate,
        "train/tokens_per_s": window["tokens"] / elapsed,
        "train/padding_fraction": 1 - window["tokens"] / max(1, window["padded"]),
    }
    if writer is not None:
        for key, val in logged.items():
            writer.add_scalar(key, val, step)
    progress.set_postfix(loss=f"{logged['train/loss']:.4f}", samples_s=f"{rate:.0f}")
    return {"time": time.perf_counter(), "examples": 0, "tokens": 0, "padded": 0}


def train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    train_set: TokenizedSet,
    evaluate: Callable[[torch.nn.Module], dict],
    cfg: TrainConfig,
    out_dir: Path,
    *,
    save: Callable[[torch.nn.Module, Path], None],
    device: torch.device,
    dist_info: DistInfo = DistInfo(),
    resume: bool = False,
    extra_modules: dict[str, torch.nn.Module] | None = None,
    collate_fn: Callable[[TokenizedSet, object], dict] = collate,
    on_step: Callable[[int], bool | None] | None = None,
) -> TrainResult:
    """Train ``model`` (already on ``device``) and write checkpoints under ``out_dir``.

    ``evaluate(model)`` returns validation metrics including ``cfg.metric``;
    ``save(model, folder)`` writes a loadable model folder (``save_pretrained``,
    tokenizer, run info). ``extra_modules`` (e.g. hidden-state projections)
    are trained and checkpointed with the model. ``on_step(step)`` is called
    after every optimizer step; when it returns ``True`` (not merely a truthy value), training stops after
    that step without evaluating or checkpointing (kd.bench times steps so).
    """
    out_dir = Path(out_dir)
    parts = dist_info.world_size * cfg.grad_accum
    if cfg.batch_size % parts:
        raise ValueError(
            f"train.batch_size ({cfg.batch_size}) is the global batch of all ranks: it must be a multiple of "
            f"world size x train.grad_accum = {dist_info.world_size} x {cfg.grad_accum} = {parts}; "
            f"change train.batch_size, train.grad_accum or the number of processes"
        )
    extra_modules = dict(extra_modules or {})
    raw_model = model
    if dist_info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        broadcast_parameters(list(extra_modules.values()), dist_info)
    if cfg.compile:
        model = torch.compile(model, dynamic=True)
    modules = {"model": raw_model, **extra_modules}
    optimizer = build_optimizer(list(modules.values()), cfg, device)

    def epoch_batches(epoch: int) -> list:
        """The epoch's global batches, the same on every rank (a batch too small to feed every micro-batch is dropped)."""
        return length_bucketed_batches(train_set.lengths, cfg.batch_size, seed=cfg.seed, epoch=epoch, min_size=parts)

    steps_per_epoch = len(epoch_batches(0))
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set)} training examples cannot fill the {parts} micro-batches of one step; "
                         f"use fewer processes or a smaller train.grad_accum")
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    scheduler = linear_warmup_decay(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    amp_dtype = autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_metric": -math.inf, "best_step": -1, "evals_since_best": 0, "history": []}
    if resume:
        last = out_dir / "last" / STATE_DIR
        state = load_trainer_state(last, modules, optimizer, device)
        scheduler.load_state_dict(state.pop("scheduler"))
        # The configured peak rate, not the saved one: a resume allowed to change train.lr
        # (--allow-changed) must train with it. Unchanged, this restores the same rates.
        scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
        for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
            group["lr"] = cfg.lr * factor(scheduler.last_epoch)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        state.pop("scaler", None)
        if dist_info.is_main:
            print(f"resumed from {last.parent.resolve().name}: step {state['step']}, epoch {state['epoch']}")
    restored = resume and restore_rng(last, device, dist_info.rank, dist_info.world_size)
    if dist_info.enabled and not restored:
        # Data order depends on (seed, epoch) only; dropout must differ per rank. A checkpoint
        # written by another number of ranks resumes with a fresh seed per rank and step.
        torch.manual_seed(cfg.seed + dist_info.rank + dist_info.world_size * state["step"])
    writer = None
    if dist_info.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"))

    def checkpoint(kind: tuple[str, ...]) -> None:
        """Write the step's checkpoint folder once and point the links in ``kind`` at it."""
        rank_rng = gather_rng_states(dist_info, device) if dist_info.enabled and "last" in kind else None
        if dist_info.is_main:
            name = f"step-{state['step']:06d}"

            def write(folder: Path) -> None:
                save(raw_model, folder)
                for extra_name, module in extra_modules.items():
                    save_model(module, str(folder / f"{extra_name}.safetensors"))
                if "last" in kind:
                    snapshot = {**state, "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None}
                    save_trainer_state(folder / STATE_DIR, modules, optimizer, snapshot, rank_rng)
                write_json(folder / "metrics.json", {"step": state["step"], "validation": state["history"][-1] if state["history"] else None})

            folder = write_checkpoint(out_dir / "checkpoints", name, write)
            for link in kind:
                point_link(out_dir / link, folder)
            # An older 'last' loses its trainer state only by being pruned as a whole.
            prune_checkpoints(out_dir)
        barrier(dist_info)

    def run_evaluation() -> bool:
        """Evaluate, update best / early stopping, checkpoint; True to stop early.

        Rank 0 evaluates and every rank takes its metric: ranks that scored for
        themselves could differ (mixed GPUs, non-deterministic kernels), and one
        that stopped alone would leave the others waiting in a collective. The
        history of the other ranks holds the selection metric only."""
        metrics = {}
        if dist_info.is_main:
            raw_model.eval()
            metrics = evaluate(raw_model)
            raw_model.train()
            if cfg.metric not in metrics:
                raise KeyError(f"train.metric {cfg.metric!r} is not among the validation metrics {sorted(metrics)}")
        value = broadcast_from_main(float(metrics.get(cfg.metric, math.nan)), dist_info, device)
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        state["history"].append({"step": state["step"], "epoch": state["epoch"], **numbers, cfg.metric: value})
        improved = value > state["best_metric"]
        if improved:
            state["best_metric"], state["best_step"], state["evals_since_best"] = value, state["step"], 0
        else:
            state["evals_since_best"] += 1
        if writer is not None:
            for key, val in metrics.items():
                if isinstance(val, (int, float)) and not isinstance(val, bool):
                    writer.add_scalar(f"val/{key}", val, state["step"])
            print(f"step {state['step']} epoch {state['epoch']}: val {cfg.metric} {value:.4f}" + (" (best)" if improved else ""))
        checkpoint(("best", "last") if improved else ("last",))
        return cfg.patience > 0 and state["evals_since_best"] >= cfg.patience

    from tqdm.auto import tqdm

    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    extra_params = [p for m in extra_modules.values() for p in m.parameters() if p.requires_grad]
    progress = tqdm(total=total_steps, initial=state["step"], desc="train", unit="step", disable=not dist_info.is_main, dynamic_ncols=True)
    raw_model.train()
    stopped_early = False
    finished = state["step"] >= total_steps
    window = {"time": time.perf_counter(), "examples": 0, "tokens": 0, "padded": 0}
    totals = {"examples": 0, "tokens": 0, "seconds": 0.0}
    timed_since = None  # the clock at the first step since the last evaluation
    while not finished:
        batches = epoch_batches(state["epoch"])
        if dist_info.is_main and state["step"] == 0:
            micro_batches = [m for b in batches for m in split_batch(b, dist_info.world_size, cfg.grad_accum)]
            print(f"train: {len(train_set)} examples, {steps_per_epoch} steps/epoch x {cfg.epochs}, "
                  f"padding {padding_fraction(train_set.lengths, micro_batches):.1%} of tokens")
        while True:
            if timed_since is None:
                timed_since = time.perf_counter()
            batch = batches[state["batch_in_epoch"]]
            everyone = split_batch(batch, dist_info.world_size, cfg.grad_accum)
            group = everyone[dist_info.rank * cfg.grad_accum : (dist_info.rank + 1) * cfg.grad_accum]
            micro = [to_device(collate_fn(train_set, idx), device) for idx in group]
            loss = forward_backward(model, loss_fn, micro, dist_info=dist_info, amp_dtype=amp_dtype, scaler=scaler,
                                    extra_params=extra_params)
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            state["step"] += 1
            state["batch_in_epoch"] += 1
            window["examples"] += len(batch)
            real, computed = token_counts(train_set.lengths, everyone)
            window["tokens"] += real
            window["padded"] += computed
            totals["examples"] += len(batch)
            totals["tokens"] += real
            progress.update(1)
            if state["step"] % cfg.log_every == 0 or state["step"] == total_steps:
                # Host synchronisations: once per log_every steps, and before each evaluation.
                window = log_window(writer, progress, window, loss, grad_norm, scheduler, state["step"], device)
            epoch_done = state["batch_in_epoch"] >= len(batches)
            if epoch_done:
                state["epoch"], state["batch_in_epoch"] = state["epoch"] + 1, 0
            last_step = state["step"] >= total_steps
            stopped_by_caller = on_step is not None and on_step(state["step"]) is True
            evaluating = not stopped_by_caller and (
                epoch_done or last_step or bool(cfg.eval_every and state["step"] % cfg.eval_every == 0))
            if stopped_by_caller or evaluating:
                # The timed steps end here: their kernels still queued would be charged to evaluation.
                totals["seconds"] += seconds_since(timed_since, device)
                timed_since = None
            if stopped_by_caller:
                finished = True  # the caller stops the run here: no evaluation, no checkpoint
                break
            if evaluating:
                stopped_early = run_evaluation()
            if stopped_early or last_step:
                finished = True
            if finished or epoch_done:
                break
    progress.close()
    if writer is not None:
        writer.add_hparams(
            {k: v for k, v in asdict(cfg).items() if isinstance(v, (int, float, str, bool))},
            {"hparam/best_" + cfg.metric: state["best_metric"]},
            run_name="hparams",
        )
        writer.close()
    if dist_info.is_main:
        write_json(out_dir / "train_history.json", state["history"])
    barrier(dist_info)
    seconds = totals["seconds"]
    throughput = {
        "train_examples_seen": totals["examples"], "train_tokens_seen": totals["tokens"], "train_step_seconds": seconds,
        "train_samples_per_s": totals["examples"] / seconds if seconds else None,
        "train_tokens_per_s": totals["tokens"] / seconds if seconds else None,
        "peak_memory_mib": process_peak_memory_mib(device),
    }
    return TrainResult(state["best_metric"], state["best_step"], state["step"], state["history"], stopped_early, throughput)
