sleep ${1:-0}
D=$(ls -d /tmp/full/gsm8k_small-*/)
tail -n +$(( $(cut -d" " -f1 /tmp/start_lines) + 1 )) $D/records.shard0of1.jsonl | gzip -1 > /tmp/new_records.gz
ls -la /tmp/new_records.gz
split -b 15M -d /tmp/new_records.gz $OUT/recs.gz.
cp /tmp/gpu.csv /tmp/fetch.log $OUT/ 2>/dev/null
tail -c 200000 /tmp/sweep.log > $OUT/sweep_tail.log
[ -f /tmp/pyspy_raw.txt ] && gzip -c /tmp/pyspy_raw.txt > $OUT/pyspy_raw.txt.gz
cat /tmp/pyspy.log 2>/dev/null | tail -3
wc -l $D/records.shard0of1.jsonl
echo now $(date +%s) start $(cat /tmp/t_start) sweep $(cat /tmp/t_sweep)
tail -c 1200 /tmp/sweep.log
