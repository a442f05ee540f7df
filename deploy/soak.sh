#!/usr/bin/env bash
# Soak run of the live pipeline (README): a 30 fps 1280×720 live test-pattern stream for
# SOAK_MINUTES (default 10) with a prompt every second over MQTT (mosquitto on a free
# port), the demo's model and mosaic (run `smgeo demo` once first). Samples RSS, targets
# and status every 30 s into runs/soak/samples.jsonl and prints a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/target/release/smgeo
out=runs/soak; rm -rf "$out"; mkdir -p "$out"
minutes=${SOAK_MINUTES:-10}
[ -f .cache/demo/scene/scene.json ] && [ -f .cache/demo/model/best/weights.safetensors ] \
  || { echo "run smgeo demo first (it builds the mosaic and the model)" >&2; exit 1; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
read -r lon lat < <(python3 -c 'import json; b=json.load(open(".cache/demo/scene/scene.json"))["bounds_wgs84"]; print((b[0]+b[2])/2, (b[1]+b[3])/2)')
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$out/mosquitto.conf"
PATH=$PATH:/usr/sbin mosquitto -c "$out/mosquitto.conf" > /dev/null 2>&1 & broker=$!
cat > "$out/live.toml" <<TOML
device = "auto"
mosaic = "$PWD/.cache/demo/scene/mosaic.tif"
[model]
checkpoint = "$PWD/.cache/demo/model/best"
[localiser]
chip_px = 1024
chip_gsd_m = 0.25
[mqtt]
port = $port
spool_dir = "$PWD/$out/spool"
[[streams]]
id = "soak"
source = { kind = "test", width = 1280, height = 720, fps = 30, live = true }
fallback_centre = [$lon, $lat]
TOML
sleep 0.5
mosquitto_sub -p "$port" -t 'smgeo/soak/#' -v > "$out/mqtt.log" & sub=$!
SMGEO_LOG=warn "$bin" run --config "$out/live.toml" --duration-s $((minutes * 60)) > "$out/report.json" & run=$!
sleep 5
end=$((SECONDS + minutes * 60 - 10)); i=0; next_sample=$SECONDS
while [ $SECONDS -lt $end ] && kill -0 $run 2>/dev/null; do
  x=$((100 + (i * 37) % 1000)); y=$((100 + (i * 53) % 500))
  mosquitto_pub -p "$port" -t smgeo/soak/prompts -q 1 -m "{\"id\":\"p$i\",\"x\":$x,\"y\":$y,\"mode\":\"once\"}" || true
  i=$((i + 1))
  if [ $SECONDS -ge $next_sample ]; then
    rss=$(awk '/VmRSS/ {print $2}' /proc/$run/status 2>/dev/null || echo 0)
    targets=$(grep -c '^smgeo/soak/targets' "$out/mqtt.log" || true)
    status=$(grep '^smgeo/soak/status' "$out/mqtt.log" | grep '"state"' | tail -1 | cut -d' ' -f2-)
    echo "{\"t_s\": $SECONDS, \"rss_kib\": $rss, \"prompts\": $i, \"targets\": $targets, \"status\": ${status:-null}}" >> "$out/samples.jsonl"
    next_sample=$((SECONDS + 30))
  fi
  sleep 1
done
echo "$i" > "$out/prompts_sent"
wait $run || true
kill $sub $broker 2>/dev/null || true
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
s = [json.loads(l) for l in open(f"{out}/samples.jsonl")]
rep = json.load(open(f"{out}/report.json"))[0]
rss = [x["rss_kib"] / 1024 for x in s]
print(json.dumps({
  "minutes": round((s[-1]["t_s"] - s[0]["t_s"]) / 60, 1), "prompts_sent": int(open(f"{out}/prompts_sent").read()),
  "targets": rep["targets"], "errors": rep["errors"], "frames": rep["frames"], "frames_evicted": rep["frames_evicted"],
  "latency_ms_p50": rep["latency_ms_p50"], "latency_ms_p95": rep["latency_ms_p95"],
  "rss_mib_first_last_max": [round(rss[0]), round(rss[-1]), round(max(rss))],
  "queue_depth_max": max((x["status"] or {}).get("queue_depth", 0) for x in s),
  "latency_p95_per_sample": [round((x["status"] or {}).get("latency_ms", {}).get("p95", 0)) for x in s],
}, indent=1))
PY
