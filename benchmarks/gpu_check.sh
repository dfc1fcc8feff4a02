#!/usr/bin/env bash
# featx's GPU check, for a machine with Python 3.12, torch with CUDA, numpy, scikit-learn, h5py, opencv,
# scikit-image, typer and rich, but no TensorFlow and no network: Keras runs on PyTorch.
#
#   benchmarks/gpu_check.sh --wheels DIR [--device gpu|cpu] [--photos DIR] [--images 25000]
#                           [--cpu-images 2000] [--epochs 2] [--batch-size 64] [--work DIR] [--no-venv]
#
# 1. Makes a venv over the machine's packages (--system-site-packages) in WORK and installs the wheels of
#    benchmarks/gpu_wheels.txt from DIR (--no-index) and featx from this checkout (README: "The GPU check");
#    --no-venv installs them into $PYTHON's own environment instead (python3 unless PYTHON is set).
# 2. Makes IMAGES photos of at most 200 px from the dev photos (benchmarks/make_photos.py).
# 3. Caches EfficientNet-Lite0 features of all of them on the GPU (--precision auto: fp16 there), and of the
#    first CPU_IMAGES on the GPU in fp32 and on the CPU in fp32 (featx cache --runtime keras).
# 4. Sweeps a logistic regression on the GPU cache and fine-tunes from it on the GPU for EPOCHS epochs.
# 5. Prints one table: cache img/s on the GPU and the CPU, the cosine of GPU to CPU features, fine-tune s/epoch.
#
# --device cpu runs every step on the CPU (the proof of the script where no GPU is lent): the "GPU" rows then
# say cpu. Sized for 8 minutes on an H100 machine (16 cores); on 2 cores give --images 600 --cpu-images 200.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WHEELS="" DEVICE=gpu PHOTOS="$REPO/../shared/data/catsdogs-dev/train" IMAGES=25000 CPU_IMAGES=2000 EPOCHS=2
BATCH=64 WORK="" VENV=1
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --photos) PHOTOS=$2; shift 2 ;;
    --images) IMAGES=$2; shift 2 ;;
    --cpu-images) CPU_IMAGES=$2; shift 2 ;;
    --epochs) EPOCHS=$2; shift 2 ;;
    --batch-size) BATCH=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --no-venv) VENV=0; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see $0 --help)" >&2; exit 2 ;;
  esac
done
fail() { echo "error: $*" >&2; exit 2; }
[ -n "$WHEELS" ] || fail "--wheels DIR is required: the folder of wheels listed in benchmarks/gpu_wheels.txt"
[ -d "$WHEELS" ] || fail "--wheels $WHEELS is not a folder; download the wheels as the README's GPU check says"
[ -d "$PHOTOS" ] || fail "--photos $PHOTOS is not a folder; give Kaggle's train folder (cat.N.jpg, dog.N.jpg)"
case "$DEVICE" in gpu|cpu) ;; *) fail "--device must be gpu or cpu; got $DEVICE" ;; esac
[ "$CPU_IMAGES" -le "$IMAGES" ] || fail "--cpu-images $CPU_IMAGES is more than --images $IMAGES"
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/featx-gpu-check.XXXXXX")}
mkdir -p "$WORK"
STARTED=$(date +%s)
PYTHON=${PYTHON:-python3}
step() { echo "[$(( $(date +%s) - STARTED )) s] $*"; }

if [ "$VENV" = 1 ]; then
  step "venv in $WORK/venv over $($PYTHON --version)"
  [ -x "$WORK/venv/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$WORK/venv"
  PY="$WORK/venv/bin/python"
else
  PY=$(command -v "$PYTHON")
  step "installing into $PY ($($PY --version))"
fi
FEATX="$(dirname "$PY")/featx"
install() {  # pip's and setuptools' chatter goes to a log, shown only when the install fails
  "$PY" -m pip install --no-index "$@" > "$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log" >&2; fail "pip install $* failed (above)"; }
}
install --find-links "$WHEELS" -r "$REPO/benchmarks/gpu_wheels.txt"
install --no-deps --no-build-isolation "$REPO"
"$PY" - <<'EOF'
import importlib.util, sys
import torch
if importlib.util.find_spec("tensorflow") is not None:
    print("note: TensorFlow is installed here too; this check runs Keras on PyTorch (KERAS_BACKEND=torch)")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPUs visible: {torch.cuda.device_count()}")
EOF
export KERAS_BACKEND=torch FEATX_WEIGHTS="$WORK/weights" KERAS_HOME="$WORK/keras"
if [ "$DEVICE" = gpu ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || fail "torch sees no GPU (torch.cuda.is_available() is False): check nvidia-smi, or pass --device cpu"
fi

step "$IMAGES photos of at most 200 px from $PHOTOS"
[ -d "$WORK/photos" ] || "$PY" "$REPO/benchmarks/make_photos.py" "$PHOTOS" "$WORK/photos" -n "$IMAGES" --size 200
mkdir -p "$WORK/subset"
"$PY" - "$WORK/photos" "$WORK/subset" "$CPU_IMAGES" <<'EOF'
import os, sys
photos, subset, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
names = sorted(os.listdir(photos), key=lambda name: int(name.split(".")[1]))[:n]
for name in names:
    if not os.path.lexists(os.path.join(subset, name)):
        os.symlink(os.path.join(photos, name), os.path.join(subset, name))
EOF

LITE0=(-e efficientnet_lite0 --runtime keras --batch-size "$BATCH")
step "Lite0 cache of $IMAGES photos on the $DEVICE (precision auto)"
"$FEATX" cache "$WORK/photos" "${LITE0[@]}" --device "$DEVICE" --cache-dir "$WORK/cache-main"
step "Lite0 cache of $CPU_IMAGES photos on the $DEVICE, fp32"
"$FEATX" cache "$WORK/subset" "${LITE0[@]}" --device "$DEVICE" --precision fp32 --cache-dir "$WORK/cache-device"
step "Lite0 cache of $CPU_IMAGES photos on the CPU, fp32"
"$FEATX" cache "$WORK/subset" "${LITE0[@]}" --device cpu --precision fp32 --cache-dir "$WORK/cache-cpu"

step "sweep (logreg, val selection) and fine-tune for $EPOCHS epoch(s) on the $DEVICE"
rm -rf "$WORK/experiment"
"$FEATX" sweep "$WORK"/cache-main/*.h5 --heads logreg --select val --no-ensemble --n-boot 100 \
  --no-learning-curve --out "$WORK/experiment"
"$FEATX" finetune "$WORK/experiment" --epochs "$EPOCHS" --batch-size "$BATCH" --n-boot 100 --restart

step "results"
"$PY" - "$WORK" "$DEVICE" "$IMAGES" "$CPU_IMAGES" "$(( $(date +%s) - STARTED ))" <<'EOF'
import csv, glob, json, os, platform, sys
import h5py, numpy as np, torch

work, device, images, cpu_images, seconds = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])

def cache(folder):
    path = glob.glob(os.path.join(work, folder, "*.h5"))[0]
    with h5py.File(path, "r") as h5:
        names = [os.path.basename(p.decode()) for p in h5["paths"][:]]
        return dict(zip(names, h5["features"][:].astype(np.float64))), dict(h5.attrs)

def cosine(a, b):
    common = sorted(set(a) & set(b))
    x, y = np.stack([a[n] for n in common]), np.stack([b[n] for n in common])
    c = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return f"min {c.min():.6f} / mean {c.mean():.6f} over {len(common)} photos"

main, main_attrs = cache("cache-main")
fp32, fp32_attrs = cache("cache-device")
cpu, cpu_attrs = cache("cache-cpu")
with open(os.path.join(work, "experiment", "finetune", "history.csv"), newline="") as handle:
    epochs = [float(row["seconds"]) for row in csv.DictReader(handle) if int(row["epoch"]) > 0]
with open(os.path.join(work, "experiment", "finetune", "results.csv"), newline="") as handle:
    finetuned = next(csv.DictReader(handle))
gpu = torch.cuda.get_device_name(0) if device == "gpu" else "none (--device cpu)"
cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
flags = sorted({f for line in open("/proc/cpuinfo") if line.startswith("flags")
                for f in line.split() if f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")})
rows = [
    (f"Lite0 `featx cache` on the {device}, {json.loads(main_attrs['extractor_spec'])['params']['precision']}, "
     f"{len(main)} photos", f"{main_attrs['images_per_second']:.1f} img/s"),
    (f"Lite0 `featx cache` on the {device}, fp32, {len(fp32)} photos", f"{fp32_attrs['images_per_second']:.1f} img/s"),
    (f"Lite0 `featx cache` on the CPU, fp32, {len(cpu)} photos", f"{cpu_attrs['images_per_second']:.1f} img/s"),
    (f"cosine, {device} fp32 to CPU fp32 features", cosine(fp32, cpu)),
    (f"cosine, {device} (precision auto) to CPU fp32 features", cosine(main, cpu)),
    (f"`featx finetune` on the {device}, s/epoch ({finetuned['n_train']} train photos, {len(epochs)} epochs)",
     " / ".join(f"{s:.1f}" for s in epochs)),
    ("fine-tuned test accuracy (near-duplicate crops: a smoke figure, not a result)", f"{float(finetuned['accuracy']):.4f}"),
    ("GPU", gpu),
    ("CPU", f"{cpu_model}, {os.cpu_count()} cores, {' '.join(flags)}"),
    ("software", f"Python {platform.python_version()}, torch {torch.__version__}, Keras backend "
                 f"{cpu_attrs.get('keras_backend', '?')}"),
    ("whole check", f"{seconds} s"),
]
print("\n| featx GPU check | |\n|---|---|")
for name, value in rows:
    print(f"| {name} | {value} |")
EOF
