"""Measurement, one function each: parameters (of a model or of a saved folder),
memory footprint, size on disk, latency, throughput, peak memory during a run,
and the matmul ceiling that model FLOP/s are compared with."""
from __future__ import annotations

import math
import os
import resource
import statistics
import threading
import time
from pathlib import Path

import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

from kd.eval.inference import model_device, predict_logits


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (timings need it; a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parameter_count(model: torch.nn.Module, *, trainable_only: bool = False, without_embeddings: bool = False) -> int:
    """Number of logical parameters, the same in every precision (tied weights once).

    A bitsandbytes 4-bit weight is a flat uint8 tensor of ``n/2`` bytes (two
    values each) whose logical shape is ``weight.quant_state.shape``; a torch
    dynamic int8 Linear keeps weight and bias outside ``.parameters()`` (and
    never trains). ``trainable_only``: those with ``requires_grad``;
    ``without_embeddings``: leave out parameters under a module named
    ``embeddings`` (lookups, no matmuls: the N of FLOPs = 6 N tokens).
    """
    total = 0
    for name, param in model.named_parameters():
        if (trainable_only and not param.requires_grad) or (without_embeddings and "embeddings" in name):
            continue
        quant_state = getattr(param, "quant_state", None)
        total += quant_state.shape.numel() if quant_state is not None else param.numel()
    if trainable_only:
        return total
    for module in model.modules():
        if isinstance(module, DynamicInt8Linear):
            bias = module.bias()
            total += module.weight().numel() + (bias.numel() if bias is not None else 0)
    return total


def saved_parameter_count(folder: str | Path) -> int:
    """Parameters stored in a checkpoint folder's ``model*.safetensors`` (read from the headers only)."""
    from safetensors import safe_open

    total = 0
    for file in Path(folder).glob("model*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                total += math.prod(handle.get_slice(key).get_shape())
    return total


def _quant_state_tensors(state):
    for value in vars(state).values():
        if isinstance(value, torch.Tensor):
            yield value
        elif type(value) is type(state):  # the nested state of double quantization
            yield from _quant_state_tensors(value)


def memory_footprint_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights and buffers as they sit in memory, each storage once.

    Unlike transformers' ``get_memory_footprint()`` this counts the
    bitsandbytes quantization state (4-bit absmax, code tables; int8 row
    scales ``SCB``) and the int8 weights of torch dynamic Linears (as int8
    values, not fbgemm's packed layout). Measure after a first forward: on
    CPU, bitsandbytes then replaces nf4's double-quantized absmax by bf16.
    """
    tensors = [*model.parameters(), *model.buffers()]
    for param in model.parameters():
        if getattr(param, "quant_state", None) is not None:
            tensors.extend(_quant_state_tensors(param.quant_state))
        if getattr(param, "SCB", None) is not None:
            tensors.append(param.SCB)
    for module in model.modules():
        if isinstance(module, DynamicInt8Linear):
            tensors.extend(t for t in (module.weight(), module.bias()) if t is not None)
    seen, total = set(), 0
    for tensor in tensors:
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def size_on_disk_bytes(folder: str | Path, *, weights_only: bool = False) -> int:
    """Total bytes of the files under ``folder`` (weights, config, tokenizer);
    ``weights_only``: of its ``model*.safetensors`` only."""
    files = Path(folder).glob("model*.safetensors") if weights_only else Path(folder).rglob("*")
    return sum(f.stat().st_size for f in files if f.is_file())


def measure_latency(
    model, tokenizer, urls: list[str], *, batch_size: int = 1, warmup: int = 5, repeats: int = 50,
    max_length: int = 128, autocast_dtype: torch.dtype | None = None,
) -> float:
    """Median milliseconds to score one batch of ``batch_size`` URLs, end to end
    (normalise, tokenise, pad, forward under ``autocast_dtype``) through
    :func:`kd.eval.inference.predict_logits`.

    Batch ``i`` holds ``urls[i*b : (i+1)*b]`` (cycling), so the times cover a
    spread of lengths; the first ``warmup`` batches are not timed.
    """
    device = model_device(model)
    times = []
    for i in range(warmup + repeats):
        batch = [urls[(i * batch_size + j) % len(urls)] for j in range(batch_size)]
        synchronize(device)
        start = time.perf_counter()
        predict_logits(model, tokenizer, batch, batch_size=batch_size, max_length=max_length, autocast_dtype=autocast_dtype)
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure_throughput(
    model, tokenizer, urls: list[str], *, batch_size: int = 256, max_length: int = 128,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """URLs per second scoring all of ``urls`` (sorted by length into batches, as the
    evaluation does) after one warm-up batch, end to end as in :func:`measure_latency`."""
    device = model_device(model)
    kwargs = {"batch_size": batch_size, "max_length": max_length, "autocast_dtype": autocast_dtype}
    predict_logits(model, tokenizer, urls[:batch_size], **kwargs)
    synchronize(device)
    start = time.perf_counter()
    predict_logits(model, tokenizer, urls, **kwargs)
    synchronize(device)
    return len(urls) / (time.perf_counter() - start)


def pruning_report(before_model: nn.Module, after_model: nn.Module) -> dict:
    """Sizes before and after pruning: parameters (tied weights counted
    once), word-embedding rows, and float32 bytes (4 per parameter)."""

    before, after = parameter_count(before_model), parameter_count(after_model)
    return {
        "parameters_before": before,
        "parameters_after": after,
        "embedding_rows_before": before_model.get_input_embeddings().num_embeddings,
        "embedding_rows_after": after_model.get_input_embeddings().num_embeddings,
        "fp32_bytes_before": 4 * before,
        "fp32_bytes_after": 4 * after,
        "fp32_bytes_saved": 4 * (before - after),
    }


def current_rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def process_peak_memory_mib(device: torch.device) -> float:
    """The most memory this process has held so far, in MiB: on CUDA the peak of
    ``torch.cuda.max_memory_allocated`` (tensors only), elsewhere the peak
    resident set size (``getrusage`` ``ru_maxrss``, KiB on Linux). Costs one call;
    it includes loading the models, so it is what a run needs, not one phase of it."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


class PeakMemory:
    """Peak memory between :meth:`start` and :meth:`stop`, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only). CPU: the largest
    process RSS seen by a thread sampling every 5 ms (weights, activations,
    optimizer state, and everything else the process holds).
    """

    def __init__(self, device: torch.device):
        self.device, self.peak, self._thread, self._running = device, 0, None, False

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        self.peak, self._running = current_rss_bytes(), True

        def sample():
            while self._running:
                self.peak = max(self.peak, current_rss_bytes())
                time.sleep(0.005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._running = False
            self._thread.join()
            self.peak = max(self.peak, current_rss_bytes())
        return self.peak / 2**20


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """TFLOP/s of an ``(n, n) @ (n, n)`` matmul (2 n^3 FLOPs), median of ``repeats`` after 2 untimed."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e12


def matmul_ceiling(device: torch.device, n: int) -> dict:
    """The MFU denominator ``tflops``: the matmul in the dtype the loop computes in
    (bf16 on CUDA, fp32 on CPU); the other dtype's rate is recorded for reference."""
    dtype, other = (torch.bfloat16, torch.float32) if device.type == "cuda" else (torch.float32, torch.bfloat16)
    return {"dtype": str(dtype).removeprefix("torch."), "n": n, "tflops": matmul_tflops(device, dtype, n),
            f"{str(other).removeprefix('torch.')}_tflops": matmul_tflops(device, other, n, repeats=3)}
