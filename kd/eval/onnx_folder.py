"""The ONNX export of a classifier folder, written into a new folder (``kd.export``
publishes it; ``quantize.py``'s ``onnx-int8`` variant measures it).

The folder holds ``model.onnx`` (``models.onnx``), the source's ``config.json``
and tokenizer, ``onnx_export.json``, the source's scoring record and a model
card generated for the export.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from kd.errors import UsageError

COPIED_RECORDS = ("metrics.json", "run_info.json")
"""Files of the source folder copied unchanged, where present: the scoring record
(threshold and the precision it was tuned in) and the run that made the model."""
EXPORTABLE_PRECISIONS = ("fp32", "bf16")


def write_onnx_folder(source: Path, folder: Path, *, int8: bool = False) -> None:
    """Write the ONNX export of the classifier folder ``source`` into the new, empty
    ``folder`` (model, config, tokenizer, record, scoring record and card)."""
    from kd.eval.model_card import describe_folder
    from models.onnx import EXPORTER, ONNX_FILE, ONNX_RECORD, OPSET, export_onnx, quantize_int8
    from models.quantized import load_classifier, saved_precision

    saved = saved_precision(source)
    if saved not in EXPORTABLE_PRECISIONS:
        raise UsageError(f"{source} holds a {saved} model, which cannot be exported to ONNX; "
                         "export the fp32 checkpoint it was quantized from (add --int8 for an int8 ONNX model)")
    model, tokenizer = load_classifier(source, "fp32", "cpu")
    if int8:
        fp32_path = folder / "fp32.onnx"
        export_onnx(model, fp32_path)
        quantize_int8(fp32_path, folder / ONNX_FILE)
        fp32_path.unlink()
    else:
        export_onnx(model, folder / ONNX_FILE)
    shutil.copyfile(source / "config.json", folder / "config.json")
    tokenizer.save_pretrained(folder)
    for name in COPIED_RECORDS:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    record = {"precision": "int8" if int8 else "fp32", "opset": OPSET, "exporter": EXPORTER,
              "source": str(source), "source_precision": saved}
    (folder / ONNX_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    if (folder / "metrics.json").is_file():
        describe_folder(folder)
