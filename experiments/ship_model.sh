#!/usr/bin/env bash
# Send a registry model's joined GGUF to the GPU machine in pieces (a device call carries at most 64 MiB;
# files under /tmp on a warm machine survive between calls), then convert it there once:
#   bash experiments/ship_model.sh qwen25_coder_15b_instruct     # prints one device call per piece
# After the last piece, on the device:
#   HOGWILD_CACHE=/tmp/hwcache python -m hogwild_bench.models fetch NAME --gguf /tmp/ship/FILE.gguf
set -euo pipefail
name=${1:?model config name}
# progress messages go to stderr: stdout carries only the path
gguf=$(python -c "import sys; from hogwild_bench.models import model_configs, assemble_gguf
print(assemble_gguf(model_configs()['$name'], log=lambda m: print(m, file=sys.stderr)))")
bash ../shared/device/ship_in_pieces.sh "$gguf" "${2:-55}"
