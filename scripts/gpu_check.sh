#!/usr/bin/env bash
# The GPU check of the training path, for a CUDA machine with a preinstalled torch and no network:
#   bash scripts/gpu_check.sh [TEACHER] [IMAGES] [HELDOUT]
# defaults: runs/photo64/teacher/G_AtoB.pt, runs/photo_student/student_images, .../student_heldout
# (made here by scripts/photo_teacher.py and scripts/distill_objectives.py; carry them over).
# Installs the project without dependencies (training needs torch, numpy, Pillow, tqdm only),
# samples GPU utilisation every second beside scripts/gpu_check.py (search + fine-tune of the
# new default at 256² in bf16) and prints the utilisation's median and mean at the end.
# Sized for a 10-minute device slot (the run is cut at 560 s); not yet run on a GPU. Output goes
# to $OUT when set.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
TEACHER="${1:-runs/photo64/teacher/G_AtoB.pt}"
IMAGES="${2:-runs/photo_student/student_images}"
HELD="${3:-runs/photo_student/student_heldout}"
OUTDIR="${OUT:-runs/gpu_check_out}"
mkdir -p "$OUTDIR"
python -m pip install -q --no-deps --no-build-isolation --ignore-requires-python -e . \
  >"$OUTDIR/pip.log" 2>&1 || { echo "pip install failed (see $OUTDIR/pip.log)"; tail -5 "$OUTDIR/pip.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 \
  >"$OUTDIR/util.csv" 2>/dev/null &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null || true' EXIT
timeout 560 python scripts/gpu_check.py --teacher "$TEACHER" --images "$IMAGES" --val "$HELD" \
  --size 256 --precision bf16 --out "$OUTDIR/work" "${@:4}" 2>"$OUTDIR/stderr.log" \
  | tee "$OUTDIR/gpu_check.txt"
kill $SAMPLER 2>/dev/null || true
python - "$OUTDIR/util.csv" <<'PY'
import statistics, sys
rows = [l.split(",") for l in open(sys.argv[1]) if l.strip()]
util = [float(r[0]) for r in rows if r[0].strip().replace(".", "").isdigit()]
mem = [float(r[1]) for r in rows if len(r) > 1 and r[1].strip().replace(".", "").isdigit()]
if util:
    print(f"GPU utilisation over {len(util)} s: median {statistics.median(util):.0f} %, "
          f"mean {statistics.mean(util):.0f} %; memory used max {max(mem):.0f} MiB")
else:
    print("no GPU utilisation samples (nvidia-smi missing?)")
PY
