# first call: carry [".whl", ".ship/data"]; bash experiments/device_sweep/setup.sh [STORE.tar.xz]
# (default: the complete GSM8K store of session 18; a resumed run of it has nothing left to do)
set -e
STORE=${1:-experiments/results/real_model/full_sweep_records.tar.xz}
nvidia-smi --query-gpu=name,memory.total --format=csv; nproc; git rev-parse HEAD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
mkdir -p /tmp/hwcache/wheels /tmp/ship /tmp/full /tmp/new
cp .ship/data/*.whl /tmp/hwcache/wheels/
python3 -c "import tarfile; tarfile.open('$STORE').extractall('/tmp/full')"
cp -r hogwild_bench experiments pyproject.toml /tmp/new/
wc -l /tmp/full/gsm8k_small-*/records.shard0of1.jsonl | tee /tmp/start_lines
df -h /tmp | tail -1
