# bash experiments/device_sweep/start.sh SWEEP_SECONDS [OVERRIDES...]   (carry [".ship/p26"]; pieces p00..p25 already
# in /tmp/ship); OVERRIDES are Hydra overrides added to the sweep's command, e.g. batch.window=8
set -x
R=$PWD
SECONDS_SWEEP=${1:-1200}
shift
cp .ship/p26/p26 /tmp/ship/ 2>/dev/null
date +%s > /tmp/t_start
cd /tmp/ship && cat p?? > q.gguf && rm p?? && sha256sum q.gguf   # cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
cd $R
export HOGWILD_CACHE=/tmp/hwcache
PYTHONPATH=/tmp/site:$R python -m hogwild_bench.models fetch qwen25_coder_15b_instruct --gguf /tmp/ship/q.gguf > /tmp/fetch.log 2>&1 &
FETCH=$!
# the GPU tests of this code beside the CPU-bound fetch
PYTHONPATH=/tmp/site:$R HOGWILD_TRITON_FULL=1 timeout 300 python -m pytest -q -p no:cacheprovider tests/test_triton_attention.py tests/test_cuda_graphs.py tests/test_packing.py tests/test_sampling.py tests/test_decode_graph_tables.py tests/test_bucket_tables.py > /tmp/gpu_tests.log 2>&1
echo gpu tests rc $?; tail -3 /tmp/gpu_tests.log; cp /tmp/gpu_tests.log $OUT/
wait $FETCH; tail -2 /tmp/fetch.log
setsid nohup nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > /tmp/gpu.csv 2>&1 < /dev/null &
cd /tmp/new
date +%s > /tmp/t_sweep
PYTHONPATH=/tmp/site:/tmp/new setsid nohup timeout -s INT $SECONDS_SWEEP python -m hogwild_bench +exp=gsm8k_small store.root=/tmp/full batch.max_rows=256 batch.lanes=2 batch.kv_memory_fraction=0.75 "$@" > /tmp/sweep.log 2>&1 < /dev/null &
sleep 5
PID=$(pgrep -f '^python -m hogwild_bench')
echo pid $PID
setsid nohup bash -c "sleep 300; /tmp/site/bin/py-spy record --format raw --idle --threads --nonblocking -r 50 -d 120 -p $PID -o /tmp/pyspy_raw.txt" > /tmp/pyspy.log 2>&1 < /dev/null &
