#!/usr/bin/env bash
# insightface depends on the CPU `onnxruntime` wheel; `onnxruntime-gpu` provides the same Python module and the
# two silently overwrite each other. On a machine with an NVIDIA driver we keep exactly one: the GPU build.
# Usage: select_onnxruntime.sh PYTHON [auto|cpu|gpu]
set -euo pipefail
py="$1"
want="${2:-auto}"
if [ "$want" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then want=gpu; else want=cpu; fi
fi
if [ "$want" = gpu ]; then
  "$py" -m pip uninstall -y -q onnxruntime onnxruntime-gpu >/dev/null 2>&1 || true
  "$py" -m pip install -q onnxruntime-gpu
else
  if "$py" -m pip show -q onnxruntime-gpu >/dev/null 2>&1; then
    "$py" -m pip uninstall -y -q onnxruntime-gpu
    "$py" -m pip install -q --force-reinstall --no-deps onnxruntime
  fi
fi
"$py" -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, 'providers:', ort.get_available_providers())"
