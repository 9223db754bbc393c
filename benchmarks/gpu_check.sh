#!/usr/bin/env bash
# The GPU path, proven in one short run (issue 28; under 5 minutes on one GPU):
#   1. the tests marked `gpu` (CPU and CUDA agree on deterministic rounds; a --device cuda grid
#      stores cuda as every run's device);
#   2. a 12-job grid with --device cuda --jobs-per-gpu 4: every job done, every stored device cuda;
#   3. CPU against GPU on a deterministic setting (full batches, every client), max difference;
#   4. per-round time of fedbench's vectorised round and of the sequential loop on the GPU.
# On a machine without a CUDA GPU it says so and exits 0.
# Run: bash benchmarks/gpu_check.sh   (PY=path/to/python: the interpreter, default .venv's;
# GPU_CHECK_DEVICE=cpu runs steps 2-4 on the CPU against the CPU: a check of this script itself)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEV=${GPU_CHECK_DEVICE:-cuda}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" GPU_CHECK_DEVICE="$DEV"

if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "gpu_check: $PY cannot import torch; run make install (or set PY=...)" >&2
    exit 1
fi
if [ "$DEV" = cuda ] && ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); nothing to check"
    exit 0
fi
"$PY" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0) if \
torch.cuda.is_available() else 'CPU self-check', '| torch', torch.__version__, '| CUDA', \
torch.version.cuda, '|', torch.cuda.device_count(), 'GPU(s)')"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== 1. tests marked gpu"
if [ "$DEV" = cuda ]; then "$PY" -m pytest -m gpu -q -rs -s tests/test_gpu.py -p no:cacheprovider; fi

echo "== 2. 12 jobs, --device $DEV --jobs-per-gpu 4"
cat >"$tmp/gpu12.toml" <<'TOML'
[experiment]
name = "gpu_check"
seeds = 4
rounds = 20
eval_every = 10
[task]
dataset = "digits"
model = "mlp"
hidden = [64]
clients = 20
[algorithm]
name = "fedavg"
lr = 0.05
local_steps = 5
batch_size = 16
participation = 0.5
[grid]
"algorithm.name" = ["fedavg", "scaffold", "fedprox"]
TOML
"$PY" -m fedbench run "$tmp/gpu12.toml" --db "$tmp/gpu.db" --device "$DEV" --jobs-per-gpu 4
"$PY" - "$tmp/gpu.db" <<'PYEOF'
import os, sqlite3, sys
dev = os.environ["GPU_CHECK_DEVICE"]
rows = sqlite3.connect(sys.argv[1]).execute("SELECT status, device FROM runs").fetchall()
bad = [r for r in rows if r[0] != "done" or not str(r[1]).startswith(dev)]
print(f"stored runs: {len(rows)}; devices: {sorted({r[1] for r in rows})}")
if len(rows) != 12 or bad:
    sys.exit(f"gpu_check: FAILED: expected 12 done runs on {dev}, got {len(rows)}, bad: {bad}")
print(f"ok: 12 runs done, every one on {dev}")
PYEOF

echo "== 3. CPU vs GPU, deterministic rounds (full batches, every client)"
"$PY" - <<'PYEOF'
import os, sys, torch
sys.path.insert(0, "tests")
from test_gpu import final_params
gpu_dev = torch.device(os.environ["GPU_CHECK_DEVICE"])
worst = 0.0
for name in ("fedavg", "scaffold", "fedprox"):
    cpu, gpu = final_params(name, torch.device("cpu")), final_params(name, gpu_dev)
    err = float((cpu - gpu).abs().max()) / max(float(cpu.abs().max()), 1e-12)
    worst = max(worst, err)
    print(f"  {name:9s} max |cpu − cuda| / max |cpu| = {err:.2e}")
if worst > 1e-4:
    sys.exit(f"gpu_check: FAILED: CPU and GPU differ by {worst:.2e} (> 1e-4)")
print("ok: CPU and GPU agree within 1e-4 (relative)")
PYEOF

echo "== 4. per-round time on the GPU (digits, MLP 200-200, 100 clients, 5 steps of batch 32)"
"$PY" - <<'PYEOF'
import os, sys, torch
sys.path.insert(0, "benchmarks")
import bench_round as b

def synced(step):
    def run():
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    return run

dev = torch.device(os.environ["GPU_CHECK_DEVICE"])
job = b.grid.parse(b.GRID.format(hidden=[200, 200], clients=100, steps=5, batch=32),
                   b.Path("gpu.toml")).jobs[0]
seq, vec = b.compare(synced(b.sequential_round(job, dev)), synced(b.fedbench_round(job, dev)), 5)
print(f"  sequential loop {min(seq) * 1e3:8.1f} ms/round   fedbench {min(vec) * 1e3:8.1f} ms/round"
      f"   speed-up {min(seq) / min(vec):.1f}x  (fastest of 5 timings of 3 rounds)")
PYEOF
echo "gpu_check: all checks passed"
