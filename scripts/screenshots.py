"""Look at a finished bring-up the way a person does: headless-browser screenshots of its MLflow
run page, the experiment's runs table and its Prefect flow run's summary artifact, each checked
to show the val loss.

    python -m flows up --run-root runs &            # then, in another shell:
    prefect deployment run bringup/bringup -p preset=debug_tiny --watch
    python scripts/screenshots.py --run-dir runs/debug_tiny-ttt_linear \
        --mlflow-ui http://127.0.0.1:5000 --prefect-ui http://127.0.0.1:4200 --out shots/

Also captures the registered model's page, Prefect's Artifacts list and the flow run's headline
table, comparison table and training progress artifacts. Reads the parent run id and the
Prefect flow run id from `<run-dir>/bringup.json` and its MLflow store, opens each page in Chromium (`chromium --headless`, which renders the JavaScript of both
UIs) and writes `<page>.png` and `<page>.txt` (the rendered page's text) into `--out`. The run
page (its Description) and the Prefect summary must show the val loss with its value; exit 1
names a page that does not. The runs table is captured and reported only: MLflow shows no
metric column there until a person picks one (it does show the sort by `val/loss`). Needs a
`chromium` on PATH (`apt-get install chromium`); it cannot run in CI, which has no browser.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from flows.links import run_page_url, runs_table_url

# the summary's row: "val/loss (whole val split, [95% CI]) 5.4310 [5.3915, 5.4761]"
VAL_LOSS_ROW = re.compile(r"val/loss \([^)]*\)\s*\|?\s*\d+\.\d{4}")
# the flow run's artifacts captured: the summary, the headline and comparison tables, training
# progress (the comparison only when the bring-up had controls)
ARTIFACT_KEYS = ("bringup-summary", "bringup-headline", "bringup-comparison", "training-progress")
MUST_SHOW = ("mlflow_parent_run", "prefect_summary", "prefect_headline")
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1500,1000",
                 "--virtual-time-budget=20000"]  # fmt: skip


def page_text(dom: str) -> str:
    """The visible text of a rendered page: tags and scripts dropped, entities decoded."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def capture(browser: str, url: str, out: Path, name: str) -> str:
    """`<out>/<name>.png` and `<out>/<name>.txt` of `url`; returns the page's text."""
    shot = out / f"{name}.png"
    subprocess.run([browser, *BROWSER_FLAGS, f"--screenshot={shot}", url],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    dom = subprocess.run([browser, *BROWSER_FLAGS, "--dump-dom", url],
                         check=True, capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    text = page_text(dom)
    (out / f"{name}.txt").write_text(text + "\n")
    return text


def prefect_artifact_url(prefect_ui: str, flow_run_id: str, key: str) -> str | None:
    """The page of the flow run's artifact `key` (Prefect's REST API finds its id); None when
    the flow run made none."""
    from urllib.request import Request, urlopen

    query = {"artifacts": {"key": {"any_": [key]},
                           "flow_run_id": {"any_": [flow_run_id]}}}  # fmt: skip
    request = Request(f"{prefect_ui.rstrip('/')}/api/artifacts/filter", method="POST",
                      data=json.dumps(query).encode(), headers={"Content-Type": "application/json"})  # fmt: skip
    with urlopen(request, timeout=30) as reply:
        found = json.load(reply)
    return f"{prefect_ui.rstrip('/')}/artifacts/artifact/{found[-1]['id']}" if found else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, required=True, help="a bring-up's directory")
    p.add_argument("--mlflow-ui", required=True)
    p.add_argument("--prefect-ui", required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        p.error("no chromium on PATH (apt-get install chromium)")
    record = json.loads((args.run_dir / "bringup.json").read_text())
    parent, flow_run_id = record["mlflow_parent_run_id"], record["flow_run_ids"][-1]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=args.mlflow_ui)
    experiment = client.get_run(parent).info.experiment_id
    model = f"ttt-{record['config']['preset']}-{record['config']['mixer']}"
    pages = {
        "mlflow_runs_table": runs_table_url(args.mlflow_ui, experiment),
        "mlflow_parent_run": run_page_url(args.mlflow_ui, experiment, parent),
        "mlflow_registered_model": f"{args.mlflow_ui.rstrip('/')}/#/models/{model}"
                                   "?workflowType=machine_learning",
        "prefect_artifacts": f"{args.prefect_ui.rstrip('/')}/artifacts",
        **{f"prefect_{key.split('-')[-1]}": prefect_artifact_url(args.prefect_ui, flow_run_id, key)
           for key in ARTIFACT_KEYS},
    }  # fmt: skip
    absent = [name for name, url in pages.items() if url is None]
    if [name for name in absent if name in MUST_SHOW]:
        raise SystemExit(f"flow run {flow_run_id} has no artifact for {', '.join(absent)}")
    pages = {name: url for name, url in pages.items() if url is not None}
    args.out.mkdir(parents=True, exist_ok=True)
    missing = []
    for name, url in pages.items():
        text = capture(browser, url, args.out, name)
        shown = VAL_LOSS_ROW.search(text) is not None
        verdict = "shows the val loss" if shown else "shows no val loss value"
        print(f"{name}: {url}\n  {verdict}; {args.out / name}.png")
        missing += [name] if name in MUST_SHOW and not shown else []
    if missing:
        print(f"pages without the val loss: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
