"""ONNX export of a sequence classifier and its ONNX Runtime session, for CPU serving.

An exported folder holds ``model.onnx`` (inputs ``input_ids`` and
``attention_mask``, both ``(batch, sequence)`` int64 with both axes dynamic;
output ``logits``, ``(batch, num_labels)`` float32), the source's
``config.json`` (label order, tokenizer fingerprint) and tokenizer, and
:data:`ONNX_RECORD` naming its precision (``fp32``, or ``int8`` after
ONNX Runtime's dynamic quantization). :class:`OnnxClassifier` scores it through
the same interface as a torch classifier, so ``kd.eval.inference.predict_tokenized``
drives it unchanged.

Needs the optional packages ``onnx``, ``onnxruntime`` and ``onnxscript``
(``pip install .[onnx]``); they are imported only when used.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer
from transformers.modeling_outputs import SequenceClassifierOutput

from models.encoder import phishing_index
from models.paths import NO_REMOTE_CODE, ModelFolderError, check_tokenizer

ONNX_FILE = "model.onnx"
ONNX_RECORD = "onnx_export.json"
"""``{"precision": "fp32" | "int8", "opset": N, "exporter": ..., "source": ..., "source_precision": ...}``,
written beside :data:`ONNX_FILE`."""
ONNX_PRECISIONS = ("fp32", "int8")
OPSET = 18
EXPORTER = "torch.onnx.export(dynamo=True)"
INPUT_NAMES = ("input_ids", "attention_mask")
SAMPLE_SHAPE = (2, 8)
"""Batch and sequence of the example input traced by the exporter: above 1, so
that neither axis is specialised to the constant 1 (``torch.export``'s 0/1 rule)."""


def is_onnx_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder exported by :func:`export_classifier` (it holds :data:`ONNX_FILE`)."""
    return (Path(path) / ONNX_FILE).is_file()


def onnx_precision(folder: str | Path) -> str:
    """The precision recorded in ``folder``'s :data:`ONNX_RECORD`: ``fp32`` or ``int8``."""
    record = Path(folder) / ONNX_RECORD
    try:
        precision = json.loads(record.read_text())["precision"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelFolderError(f"{folder} holds {ONNX_FILE} but no readable {ONNX_RECORD} ({err}); "
                               "export it again with python -m kd.export") from err
    if precision not in ONNX_PRECISIONS:
        raise ModelFolderError(f"{record}: precision {precision!r} is not one of {', '.join(ONNX_PRECISIONS)}")
    return precision


class _LogitsOnly(torch.nn.Module):
    """``(input_ids, attention_mask) -> logits``: the graph the exporter traces."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(model: torch.nn.Module, path: str | Path) -> None:
    """Write ``model`` (an fp32 Hugging Face sequence classifier on the CPU) to
    ``path`` as ONNX with dynamic batch and sequence axes.

    Uses torch's dynamo exporter (``torch.export`` then ONNX Script), the
    maintained one; the TorchScript exporter is deprecated and traces Python
    branches on shapes (the mask code of transformers) as constants. The
    example input's axes are above 1 so that neither is fixed to 1.
    """
    wrapper = _LogitsOnly(model).eval()  # eval() also reaches the wrapped model: no dropout in the graph
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    example = torch.ones(SAMPLE_SHAPE, dtype=torch.long)
    program = torch.onnx.export(
        wrapper, (example, example.clone()), input_names=list(INPUT_NAMES), output_names=["logits"],
        dynamic_shapes={name: {0: batch, 1: sequence} for name in INPUT_NAMES},
        opset_version=OPSET, dynamo=True, external_data=False, verbose=False,
    )
    program.save(str(path))


def quantize_int8(source: str | Path, target: str | Path) -> None:
    """ONNX Runtime's dynamic int8 quantization of the ONNX model ``source`` into ``target``:
    the MatMul weights and the embedding tables stored as int8 with one scale per
    output channel, activations quantized per call.

    Per channel, not ONNX Runtime's default per tensor: on a MiniLM teacher
    trained briefly on Hannousse, per-tensor weights changed 1.5 % of the
    validation verdicts at the saved threshold and cost 0.9 F1 points there,
    per channel 0.5 % and 0.1 points (``benchmarks/onnx-parity.md``).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)


class OnnxClassifier(torch.nn.Module):
    """An ONNX Runtime CPU session behind a torch classifier's scoring interface.

    ``model(input_ids=..., attention_mask=...)`` with ``(B, T)`` integer tensors
    returns an object whose ``.logits`` is a ``(B, num_labels)`` float32 CPU
    tensor; ``.config`` is the folder's ``config.json``. It has no parameters
    and runs on the CPU whatever device its inputs are on.
    """

    def __init__(self, folder: str | Path, threads: int | None = None):
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.folder = Path(folder)
        self.precision = onnx_precision(folder)
        self.config = AutoConfig.from_pretrained(folder, **NO_REMOTE_CODE)
        self.session = onnxruntime.InferenceSession(str(self.folder / ONNX_FILE), options,
                                                    providers=["CPUExecutionProvider"])
        self.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SequenceClassifierOutput:
        feed = {"input_ids": input_ids.cpu().long().numpy(), "attention_mask": attention_mask.cpu().long().numpy()}
        (logits,) = self.session.run(["logits"], feed)
        return SequenceClassifierOutput(logits=torch.from_numpy(logits))


def load_onnx_classifier(folder: str | Path, threads: int | None = None) -> tuple[OnnxClassifier, object]:
    """``(OnnxClassifier, tokenizer)`` from an exported folder, after the checks of
    ``models.quantized.load_classifier``: the tokenizer fits the model and the
    labels name a phishing class."""
    tokenizer = AutoTokenizer.from_pretrained(folder, **NO_REMOTE_CODE)
    config = AutoConfig.from_pretrained(folder, **NO_REMOTE_CODE)
    check_tokenizer(tokenizer, config, folder)
    phishing_index(config, folder)
    return OnnxClassifier(folder, threads), tokenizer
