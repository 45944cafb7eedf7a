#!/usr/bin/env bash
# The main job: one bring-up of the TTT-Linear model on the embedded corpus (the standard
# library), tokenizer -> shards -> train -> bench -> eval, as a Prefect flow run in this process,
# logged to MLflow. Default preset small_cpu (well under 15 minutes on 2 CPU cores); arguments
# are passed to `python -m flows run`, e.g. --preset debug_tiny, --run-root DIR,
# --set train.steps=400, --refresh.
source "$(dirname "$0")/setup_env.sh"   # venv + project installed; leaves us in the repo root

run_root="runs"
args=("$@")
has_preset=false
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --run-root) run_root="${args[$((i + 1))]:-runs}" ;;
    --run-root=*) run_root="${args[$i]#--run-root=}" ;;
    --preset | --preset=*) has_preset=true ;;
  esac
done
$has_preset || set -- --preset small_cpu "$@"

status=0
python -m flows run "$@" || status=$?
run_root="$(cd "$run_root" 2>/dev/null && pwd || echo "$run_root")"
echo
echo "[bringup] run root:     $run_root  (one folder per bring-up, each with bringup.json)"
echo "[bringup] MLflow UI:    mlflow ui --backend-store-uri sqlite:///$run_root/mlflow.db --port 5000"
echo "[bringup]               then open http://127.0.0.1:5000 (experiment 'bringup')"
echo "[bringup] whole stack:  python -m flows up --run-root $run_root   (Prefect + MLflow UIs)"
exit $status
