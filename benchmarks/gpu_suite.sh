#!/usr/bin/env bash
# The GPU benchmark in one call (issue 15): `python -m kd.bench --suite gpu` on a CUDA machine
# that has no network, no packaged models and no bitsandbytes (the device machine's CUDA image).
#
#   benchmarks/gpu_suite.sh prepare   # here: write .gpu/ (git-ignored: configs + tokenizers, the URL data, wheels)
#   benchmarks/gpu_suite.sh run       # there, with .gpu carried: install the wheels, run the suite
#
# The device tool call: run(command="benchmarks/gpu_suite.sh run", carry=[".gpu"], timeout_s=600).
# The suite is sized for about 5 minutes on an H100/H200; results go to benchmarks/gpu-<card>.{json,md}
# and to $OUT when that is set.
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=.gpu
PY=${PYTHON:-python3}

case "${1:-}" in
prepare)
    PY=${PYTHON:-.venv/bin/python}
    mkdir -p $ASSETS/wheels $ASSETS/data
    # Config and tokenizer only (random init): the encoder's vocabulary is bert-base-uncased's.
    $PY - <<'PYTHON'
from transformers import AutoConfig
from models.causal_lm import load_causal_tokenizer
from models.encoder import load_tokenizer
from models.gguf import resolve_causal_lm
from models.paths import resolve_model_path

for alias, folder, tokenizer in (("packaged:minilm", ".gpu/encoder", load_tokenizer),
                                 ("packaged:smollm2", ".gpu/decoder", load_causal_tokenizer)):
    path = resolve_causal_lm(alias) if alias.endswith("smollm2") else resolve_model_path(alias)
    AutoConfig.from_pretrained(path).save_pretrained(folder)
    tokenizer(alias).save_pretrained(folder)
PYTHON
    cp -r "${KD_DATA_DIR:-../shared/data}/hannousse" $ASSETS/data/
    # Not in the CUDA image: bitsandbytes and tldextract's own needs (CPython 3.12 there). bitsandbytes
    # is pinned to the release the CPU suite passes with; 0.50.2 ships the CUDA 13.0 library the image needs.
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d $ASSETS/wheels bitsandbytes==0.50.2 tldextract requests-file
    du -sh $ASSETS
    # The device tool carries at most 64 MiB in all (the working tree included).
    kib=$(du -sk $ASSETS | cut -f1)
    if [ "$kib" -gt $((64 * 1024)) ]; then
        echo "$0: error: $ASSETS is $((kib / 1024)) MiB, over the 64 MiB the device tool carries" >&2
        exit 1
    fi
    ;;
run)
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $ASSETS/wheels/*.whl
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    out=$($PY -c "import re, torch; print('benchmarks/gpu-' + re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-') + '.json')")
    $PY -m kd.bench --suite gpu --model $ASSETS/encoder --causal-model $ASSETS/decoder \
        --data-dir $ASSETS/data --out "$out" 2>&1 | tee "${OUT:-/tmp}/gpu_suite.log"
    if [ -n "${OUT:-}" ]; then cp "$out" "${out%.json}.md" "$OUT"/; fi
    ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
