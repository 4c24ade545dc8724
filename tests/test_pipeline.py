"""End to end: the real dvc.yaml on a reduced demo, in a temporary git repo."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image
from safetensors import safe_open

from stylemix.commands.queue import workers
from stylemix.data.latent_cache import LatentCache
from tests.conftest import ROOT
from tests.e2e import ENV, EVERY_STAGE, STYLES, TIMEOUT, commit, make_repo, ran, reduce, run_block, set_params, sh
from tests.readme import block, commands


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return make_repo(tmp_path_factory.mktemp("e2e") / "repo", reduce)


def test_repro_runs_every_stage_then_nothing(repo):
    first = sh(repo, "dvc", "repro").stdout
    assert ran(first) == EVERY_STAGE
    for style in STYLES:
        rows = [json.loads(line) for line in (repo / f"data/captions/{style}/metadata.jsonl").read_text().splitlines()]
        assert len(rows) == 8 and all(r["text"] for r in rows)  # 5 images + gray, rgba, rotated
        summary = json.loads((repo / f"reports/filter/{style}/summary.json").read_text())
        assert summary["kept"] == 8 and summary["rejected"] == 7
        # Buckets: the openmojis come in three shapes, through encode, train and validate.
        assert summary["buckets"] == ({"24x40": 2, "32x32": 4, "40x24": 2} if style == "openmoji" else {"32x32": 8})
        held, trained = (LatentCache(repo / f"data/latents/{style}/{name}.safetensors") for name in ("heldout", "latents"))
        assert (len(held), len(trained)) == (3, 5)  # validation.split 3
        assert (repo / f"models/lora/{style}/pytorch_lora_weights.safetensors").is_file()
        assert (repo / f"models/lora/{style}/{style}_kohya.safetensors").is_file()
        train = json.loads((repo / f"reports/train/{style}/metrics.json").read_text())
        assert train["steps"] == 4 and {"val_loss", "val_loss_base", "val_loss_by_timestep"} <= set(train)
        # dvclive's validation images are a declared DVC plot, its folder there even when no step logged one
        outs = {o["path"] for o in yaml.safe_load((repo / "dvc.lock").read_text())["stages"][f"train@{style}"]["outs"]}
        assert f"reports/train/{style}/plots/images" in outs and (repo / f"reports/train/{style}/plots/images").is_dir()
    validation = json.loads((repo / "reports/validation.json").read_text())
    assert list(validation["loss"]) == ["base", *STYLES] and list(validation["own_style_best"]) == list(STYLES)
    assert (repo / "reports/plots/validation.png").is_file()
    assert json.loads((repo / "models/base/source.json").read_text())["kind"] == "tiny"
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert list(metrics["models"]) == ["base", *STYLES, "mix", "mix2"]
    assert metrics["scorer"]["clip_model"] == "local-dir:stylemix/pretrained/tiny-clip" and "demo" in metrics["scorer"]["about"]
    truth = metrics["ground_truth"]  # the prompt is a held-out subject: judged against its real pictures in every look
    assert truth["subjects"] == ["rocket", "zebra"] and list(truth["style_accuracy"]) == ["base", *STYLES, "mix", "mix2"]
    assert sorted(truth["looks"]) == sorted(["noto", "twemoji", "fluent", "flat", "lineart", "openmoji"])
    assert truth["models"]["lineart"]["pictures"] == 2 and {"style_accuracy", "nearness", "nearness_base"} <= set(truth["models"]["lineart"])
    report = (repo / "reports/report.md").read_text()
    assert "**Scorer:** the demo's scorer" in report and "grids/prompt_0.png" in report and "| mix2 |" in report
    assert "## Did each LoRA learn its style?" in report and "| lineart LoRA |" in report and "plots/validation.png" in report
    assert "## Drawing subjects no LoRA saw" in report and "grids/truth.png" in report and (repo / "reports/plots/scores/style_accuracy.png").is_file()
    assert sorted(p.name for p in (repo / "reports/grids").iterdir()) == [
        "overview.png", "prompt_0.png", "strengths.png",  # the merges keep lineart's tokens:
        "tokens_lineart.png", "tokens_mix.png", "tokens_mix2.png", "truth.png"]
    assert "grids/tokens_lineart.png" in report and "grids/strengths.png" in report
    assert sorted(p.name for p in (repo / "reports/images/mix2/strengths").iterdir()) == ["w0.5_p0_s0.png"]  # generate.strengths: [0.5, 1.0]
    assert not (repo / "reports/images/base/strengths").exists()
    assert sorted(p.name for p in (repo / "reports/images/mix/tokens").iterdir()) == ["t0_p0_s0.png", "t1_p0_s0.png", "t2_p0_s0.png"]
    mix2 = json.loads(safe_open(repo / "models/merged/mix2/pytorch_lora_weights.safetensors", "pt").metadata()["stylemix"])
    assert mix2["tokens"] == {"<cu_trg>": "close-up", "<ms_trg>": "medium shot", "<fs_trg>": "full shot"}
    # mix2's schedule cannot be baked: its styles' LoRAs ride along and generate drew them live, lineart at 0.5 in the up blocks.
    assert mix2["schedule"] == {"openmoji": {"start": 0, "end": 0.5}} and mix2["blocks"]["lineart"]["up_blocks.0.attentions.0"] == 0.5
    assert sorted(p.name for p in (repo / "models/merged/mix2/components").iterdir()) == ["lineart", "openmoji"]
    for pair, methods in (("ws", ["linear"]), ("ws2", ["linear", "svd"])):
        table = pd.read_csv(repo / f"reports/explore/{pair}/points.csv")
        assert len(table) == 4 * len(methods) and list(table["method"].unique()) == methods
        assert table.iloc[0]["bleed"] == pytest.approx(0, abs=1e-6)  # (0, 0): the base itself
        plots = sorted(p.name for p in (repo / f"reports/explore/{pair}/plots").iterdir())
        assert plots == sorted(["heatmaps.png", "pareto.png", *[f"{kind}_{m}.png" for kind in ("grid", "bleed") for m in methods]])
        explored = json.loads((repo / f"reports/explore/{pair}/metrics.json").read_text())
        assert explored["points"] == len(table) and set(explored["alone"]) == {"openmoji", "lineart"}
        assert f"(explore/{pair}/plots/pareto.png)" in report and f"(explore/{pair}/plots/grid_{methods[-1]}.png)" in report
    second = sh(repo, "dvc", "repro").stdout
    assert ran(second) == set() and "Data and pipelines are up to date" in second


def test_trigger_change_never_recaptions_and_a_second_run_meanwhile_is_refused(repo):
    set_params(repo, lambda raw: raw["styles"]["openmoji"].update(trigger="aquastyle"))
    with subprocess.Popen(["dvc", "repro"], cwd=repo, env=ENV | {"PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as first:
        try:
            log = ""
            for line in iter(first.stdout.readline, ""):
                log += line
                if line.startswith("Running stage"):  # it holds the lock on that stage's paths
                    break
            # A second `dvc repro` in the same workspace meanwhile: refused by DVC's locks (the paths a running
            # stage writes, or the repo's own while the first records a stage), touching nothing
            second = sh(repo, "dvc", "repro", check=False, timeout=300)
            assert second.returncode != 0 and ("is busy, it is being blocked by" in second.stderr
                                               or "Unable to acquire lock" in second.stderr), second.stderr
            log += first.stdout.read()
            assert first.wait(timeout=TIMEOUT) == 0, log
        finally:
            if first.poll() is None:
                first.kill()
    # filter re-checks (cheap) and writes the same images, so the caption stage is skipped;
    # the other style is not touched.
    assert ran(log) >= {"filter@openmoji", "encode@openmoji", "train@openmoji", "generate_style@openmoji"}
    assert not ran(log) & {"caption@openmoji", "caption@lineart", "encode@lineart", "train@lineart",
                           "generate_style@lineart", "generate_base"}
    metrics = sh(repo, "dvc", "metrics", "show", "--json").stdout
    assert "reports/filter/openmoji/summary.json" in metrics and "reports/train/lineart/metrics.json" in metrics


def test_combo_weight_change_reruns_only_that_combo(repo):
    set_params(repo, lambda raw: raw["merge"]["combos"]["mix"]["weights"].update(openmoji=0.6, lineart=0.4))
    status = sh(repo, "dvc", "status", "--json").stdout
    # score and report read the list of combinations; generate_combo@mix follows from merge@mix's output.
    assert set(json.loads(status)) == {"merge@mix", "score", "report"}
    assert ran(sh(repo, "dvc", "repro").stdout) == {"merge@mix", "generate_combo@mix", "score", "report"}


def test_explore_grid_change_reruns_only_that_pair_and_a_point_becomes_a_combination(repo):
    set_params(repo, lambda raw: raw["merge"]["explore"]["pairs"]["ws"].update(weights=[0, 0.5, 1]))
    # report reads the pairs' names and methods for its links; no other pair, no training, no scoring
    assert set(json.loads(sh(repo, "dvc", "status", "--json").stdout)) == {"explore@ws", "report"}
    assert ran(sh(repo, "dvc", "repro").stdout) == {"explore@ws", "report"}
    assert len(pd.read_csv(repo / "reports/explore/ws/points.csv")) == 9
    plot = json.loads(sh(repo, "dvc", "plots", "show", "--json", "reports/explore/ws/points.csv").stdout)
    axes = plot["data"]["reports/explore/ws/points.csv"][0]["content"]["encoding"]  # the plane, by the two similarities
    assert (axes["x"]["field"], axes["y"]["field"]) == ("sim_openmoji", "sim_lineart")
    log = run_block(repo, "explore", {"flat_lineart": "ws", "0.75,0.75": "0.5,1"})
    assert "the Pareto front" in log and "merge.combos.inked_flat" in log
    sh(repo, "stylemix", "explore", "ws2", "--point", "0.5,0.5", "--method", "svd", "--save", "ws_svd")
    combos = yaml.safe_load((repo / "params.yaml").read_text())["merge"]["combos"]
    # the point as it was drawn: its weights, and the pair's schedule, method, rank and block weights
    assert combos["inked_flat"] == {"weights": {"openmoji": 0.5, "lineart": 1.0}, "schedule": {"openmoji": {"start": 0, "end": 0.5}}}
    assert combos["ws_svd"] == {"weights": {"lineart": 0.5, "openmoji": 0.5}, "method": "svd", "rank": 4, "blocks": {"lineart": {"up": 0.5}}}
    assert {"merge@inked_flat", "merge@ws_svd"} <= set(json.loads(sh(repo, "dvc", "status", "--json").stdout))
    one_style = sh(repo, "stylemix", "explore", "ws", "--point", "0,1", "--save", "nope", check=False)
    assert one_style.returncode == 2 and "one style alone, not a mix" in one_style.stderr
    set_params(repo, lambda raw: [raw["merge"]["combos"].pop(name) for name in ("inked_flat", "ws_svd")])


def test_exp_run_retrains_and_diffs_per_model(repo):
    commit(repo, "trained")
    log = run_block(repo, "exp-run")
    models = {f"{stage}@{s}" for stage in ("train", "generate_style") for s in STYLES}
    combos = {f"{stage}@{c}" for stage in ("merge", "generate_combo") for c in ("mix", "mix2")}
    assert ran(log) == models | combos | {"validate", "score", "report", "explore@ws", "explore@ws2"}
    assert "lora.rank" in log and "models.mix.clip_score.mean" in log  # params diff, metrics diff, exp show
    params = json.loads(sh(repo, "dvc", "params", "diff", "--json").stdout)
    assert params["params.yaml"] == {"lora.rank": {"old": 8, "new": 16, "diff": 8}}  # the demo trains rank 8
    metrics = json.loads(sh(repo, "dvc", "metrics", "diff", "--json").stdout)["reports/metrics.json"]
    for model in (*STYLES, "mix", "mix2"):
        assert f"models.{model}.clip_score.mean" in metrics
        assert f"models.{model}.style_similarity.openmoji.mean" in metrics
    assert not [key for key in metrics if key.startswith("models.base.")]  # unchanged: same base, seeds, scorer


def start_queue(repo: Path, line: str, **env: str) -> None:
    """Run a `dvc queue start` line. The workers it starts outlive it and inherit its output, so that
    goes to a file: a pipe would keep a test waiting for EOF until the last worker ended."""
    log = repo / ".dvc/tmp/queue-start.log"
    with log.open("a") as out:
        result = subprocess.run(["bash", "-c", line], cwd=repo, env=ENV | env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, timeout=120)
    assert result.returncode == 0, log.read_text()


def stop_workers(repo: Path, grace: float = 30) -> tuple[list[str], list[str]]:
    """End the repo's queue workers that are left: `dvc queue stop` (the README's advice), then the
    process group of any that did not listen (the worker, the process that spawned it and whatever
    experiment it ran: nothing else). Returns (workers stopped, workers killed)."""
    left = list(workers(repo))
    if left:
        sh(repo, "dvc", "queue", "stop", check=False, timeout=120)
        deadline = time.monotonic() + grace
        while workers(repo) and time.monotonic() < deadline:
            time.sleep(1)
    killed = workers(repo)
    for pid in killed.values():
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    return left, list(killed)


@pytest.fixture
def queue(repo):
    """The repo, and no queue worker left running after the test, passed or failed."""
    yield repo
    stop_workers(repo)


def enqueue(repo: Path, line: str) -> list[str]:
    """Run a `dvc exp run --queue` line; returns the names of the experiments it queued."""
    names = re.findall(r"Queued experiment '([\w-]+)'", sh(repo, "bash", "-c", line).stdout)
    assert names, f"{line!r} queued nothing"
    return names


def queue_done(repo: Path, names: list[str], start: str, timeout: float = 1200, idle_grace: float = 30, **env: str) -> dict[str, int]:
    """Wait until every named experiment reads Success (a task between the queue and a worker is
    listed as neither queued nor running, so only the names tell when it is done; a `dvc queue status`
    that meets the broker race fails with "Expecting value" and is asked again), then `idle_grace`
    seconds for the workers to end themselves. When tasks still read Queued and no worker is left
    (treeverse/dvc#10562), runs the `start` line again, as the README tells users to. Returns the
    workers still there: those the broker race (treeverse/dvc#10428) left idle, for the `queue`
    fixture, or the test, to stop."""
    deadline, orphaned = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        result = sh(repo, "dvc", "queue", "status", check=False, timeout=120)
        if result.returncode and "Expecting value" in result.stderr:  # the same race, met by the status query
            continue
        assert result.returncode == 0, result.stderr
        status = result.stdout
        states = dict(re.findall(r"^\w+\s+([\w-]+)\s+.*?\s(\w+)$", status, re.M))
        assert not [n for n in names if states.get(n) == "Failed"], status
        if all(states.get(n) == "Success" for n in names):
            settle = time.monotonic() + idle_grace
            while workers(repo) and time.monotonic() < settle:
                time.sleep(1)
            return workers(repo)
        stranded = any(states.get(n) == "Queued" for n in names) and "Running" not in states.values() and not workers(repo)
        orphaned = orphaned + 1 if stranded else 0
        if orphaned == 3:  # three polls in a row: not a worker still starting up
            start_queue(repo, start, **env)
            orphaned = 0
        time.sleep(3)
    raise AssertionError(f"queue still busy after {timeout}s:\n{status}")


def test_queued_sweep_and_its_heatmaps(queue):
    repo = queue
    commit(repo, "rank 16")
    # rank 4 and 16 at the demo's alpha 8: (16, 8) is the committed run (DVC's run cache answers it), (4, 8) trains
    queue_line, start, _status, draw = commands("sweep", {"lora.rank=4,8,16": "lora.rank=4,16", "lora.alpha=4,8,16,32": "lora.alpha=8"})
    names = enqueue(repo, queue_line)
    assert len(names) == 2
    start_queue(repo, start)
    queue_done(repo, names, start)
    sh(repo, "bash", "-c", draw)
    table = pd.read_csv(repo / "reports/sweep/sweep.csv")
    assert sorted(zip(table["lora.rank"], table["lora.alpha"])) == [(4, 8), (16, 8)]
    loss = table[[c for c in table.columns if c.endswith("openmoji/metrics.json:final_loss")]].squeeze()
    assert loss.nunique() == 2  # each cell is its own training run
    assert len([c for c in table.columns if c.endswith("clip_score.mean")]) == 5  # base, 2 styles, 2 combos
    heatmap, images = (Image.open(repo / f"reports/sweep/{name}.png") for name in ("heatmaps", "images"))
    assert heatmap.width > 1000 and images.size == (150 + 128, 34 + 22 + 2 * 128)  # 2 rows x 1 column
    # The workspace holds the committed rank 16 / alpha 8 run (the demo's alpha): its image is the (16, 8) cell.
    cell = images.crop((152, 186, 276, 310))  # row rank = 16, column alpha = 8
    committed = Image.open(repo / f"reports/images/{STYLES[0]}/p0_s0.png").convert("RGB").resize((124, 124), Image.NEAREST)
    assert cell.tobytes() == committed.tobytes()


def test_styles_trained_in_parallel_come_back_through_the_run_cache_even_after_the_broker_race(queue):
    """Two workers, each with its monitor thread killed as treeverse/dvc#10428 kills it: they finish
    the queue and then idle; the test stops them and goes on, as the README tells users to."""
    repo = queue
    set_params(repo, lambda raw: raw["train"].update(lr=5e-4))
    commit(repo, "lower lr")
    *queue_lines, start, _status, repro = commands("parallel-styles", {"flat": "lineart"})
    names = [name for line in queue_lines for name in enqueue(repo, line)]
    race = {"PYTHONPATH": str(ROOT / "tests/broker_race")}
    start_queue(repo, start, **race)
    idle = queue_done(repo, names, start, **race)
    # They outlived the queue, as after the race: both, or one (once in four full-suite runs here the
    # second had already ended: DVC's doing, not ours); the hint counts whatever is left.
    assert idle and all("JSONDecodeError" in (repo / f".dvc/tmp/exps/celery/{name}.out").read_text() for name in idle), idle
    hint = sh(repo, "stylemix", "sweep", "--rows", "train.lr", "--cols", "lora.rank", check=False).stdout
    assert f"{len(idle)} queue worker(s) still run" in hint and "`dvc queue stop` ends them" in hint
    assert stop_workers(repo) == (list(idle), [])  # the README's `dvc queue stop` ends them all
    result = sh(repo, "bash", "-c", repro)
    log = result.stdout + result.stderr
    assert not ran(log) & {"train@openmoji", "train@lineart"}
    assert "Stage 'train@openmoji' is cached - skipping run" in log
    assert "Stage 'train@lineart' is cached - skipping run" in log


def test_push_then_pull_in_a_fresh_clone_needs_no_training(repo, tmp_path):
    commit(repo, "results")
    run_block(repo, "share", {"/mnt/team/stylemix-dvc": str(tmp_path / "remote")})
    clone = tmp_path / "clone"
    log = run_block(tmp_path, "pull", {"https://github.com/you/stylemix.git && cd stylemix": f"{repo} {clone} && cd {clone}"})
    assert "Data and pipelines are up to date" in log
    assert ran(sh(clone, "dvc", "repro").stdout) == set()
    for path in ("models/lora/openmoji/pytorch_lora_weights.safetensors", "models/merged/mix/mix_kohya.safetensors",
                 "reports/images/mix/p0_s0.png", "reports/metrics.json"):
        assert (clone / path).read_bytes() == (repo / path).read_bytes(), path


def test_a_registered_lora_comes_out_of_the_model_registry_and_loads(repo, tmp_path):
    """The README's registry lines: `gto register` tags the committed LoRA (after the push test's commit),
    `dvc artifacts get` fetches it into an empty folder by name, and diffusers loads it."""
    from diffusers import StableDiffusionPipeline

    run_block(repo, "registry", {"https://github.com/you/stylemix.git": str(repo), "openmoji-lora": str(tmp_path / "got")})
    assert "openmoji@v0.0.1" in sh(repo, "git", "tag").stdout
    got, trained = tmp_path / "got", repo / "models/lora/openmoji"
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in trained.iterdir())
    assert (got / "pytorch_lora_weights.safetensors").read_bytes() == (trained / "pytorch_lora_weights.safetensors").read_bytes()
    pipe = StableDiffusionPipeline.from_pretrained(repo / "models/base")
    pipe.load_lora_weights(str(got), adapter_name="openmoji")
    assert pipe.get_list_adapters()["unet"] == ["openmoji"]


def kill_at(repo: Path, stage: str, moment) -> None:
    """`dvc repro -f -s stage`, its whole process group SIGKILLed (as an OOM kill or a lost machine)
    once `moment()` is true, or `moment` seconds after DVC starts the stage's command; the stage must
    still be running."""
    import threading

    with subprocess.Popen(["dvc", "repro", "-f", "-s", stage], cwd=repo, env=ENV | {"PYTHONUNBUFFERED": "1"},
                          start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        running, log = threading.Event(), []

        def read():  # drains DVC's output, and says when the stage's command starts
            for line in proc.stdout:
                log.append(line)
                if line.startswith("Running stage"):
                    running.set()
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + TIMEOUT
            if not callable(moment):
                running.wait(TIMEOUT)
                at = time.monotonic() + moment
                moment = lambda: time.monotonic() > at  # noqa: E731
            while not moment() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proc.poll() is None, f"{stage} ended ({proc.returncode}) before the moment to kill it:\n{''.join(log)}"
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            reader.join(timeout=60)


def test_stages_killed_or_out_of_disk_lose_nothing(repo):
    """Faults on purpose: `dvc repro` SIGKILLed in each kind of stage (while merge@C and generate write
    their outputs, after train@S's first checkpoint, at a seeded moment of encode@S, explore@P, score
    and report), and stages stopped by a full disk (`ulimit -f`). After each, the same command
    again (a plain `dvc repro` would check the last run's outputs out of DVC's cache) finishes,
    training resumes from its last checkpoint, nothing half-written is left, and every output equals
    the uninterrupted run's, byte for byte (dvc.lock's hashes; one machine, deterministic stages)."""
    import random
    import shutil

    rng = random.Random(39)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    ckpt = repo / "models/checkpoints/lineart"

    def writing(folder: str, name: str):
        return lambda: any((repo / folder).glob(f".{name}.*.tmp"))  # atomic_dir's temporary: mid-write

    def rerun(stage: str) -> str:
        log = sh(repo, "dvc", "repro", "-f", "-s", stage).stdout
        assert ran(log) == {stage}, log
        assert yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]["outs"] == lock[stage]["outs"], stage
        assert not [p for p in (repo / "data").rglob(".*.tmp")] + [p for p in (repo / "models").rglob(".*.tmp")] \
            + [p for p in (repo / "reports").rglob(".*.tmp")], stage
        return log

    shutil.rmtree(ckpt)
    for stage, moment in (("encode@lineart", rng.uniform(0.3, 1.5)),
                          ("train@lineart", lambda: (ckpt / "step-000002/state.json").is_file()),
                          ("merge@mix", writing("models/merged", "mix")),
                          ("generate_combo@mix", writing("reports/images", "mix")),
                          ("explore@ws", rng.uniform(0.3, 1.5)), ("score", rng.uniform(0.3, 1.5)), ("report", rng.uniform(0.3, 1.5))):
        kill_at(repo, stage, moment)
        log = rerun(stage)
        assert ("train lineart: resuming from models/checkpoints/lineart/step-00000" in log) == (stage == "train@lineart")

    shutil.rmtree(ckpt)
    for stage, args, path in (("merge@mix", ["merge", "mix"], "models/merged/mix"),
                              ("train@lineart", ["train", "lineart"], "models/checkpoints/lineart/step-000002")):
        full = sh(repo, "bash", "-c", f"ulimit -f 512 && python -m stages.{args[0]} {args[1]}", check=False)  # KiB: DVC's own databases fit, a LoRA does not
        assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
        assert full.stderr.strip().splitlines()[-1] == (f"error: {path}: no room to write it (File too large); what was there "
                                                        f"before is as it was: free disk space (`df -h`) and run it again")
        if stage == "merge@mix":  # the merged LoRA as it was: nothing to redo
            assert "Data and pipelines are up to date" in sh(repo, "dvc", "status").stdout
        else:  # train@lineart rewrote its logs before the disk filled: it trains again, to the same bytes
            rerun(stage)
    assert "Data and pipelines are up to date" in sh(repo, "dvc", "status").stdout


def test_accelerate_launch_then_commit(repo):
    lora = repo / "models/lora/openmoji/pytorch_lora_weights.safetensors"
    before = lora.read_bytes()
    log = run_block(repo, "accelerate", ACCELERATE_USE_CPU="1")
    assert "train openmoji: 4 of 4 steps" in log and lora.read_bytes() != before  # 2 processes x batch 2: other batches
    assert "train@openmoji" not in json.loads(sh(repo, "dvc", "status", "--json").stdout)
    downstream = {"merge@mix", "merge@mix2", "generate_style@openmoji", "generate_combo@mix", "generate_combo@mix2",
                  "explore@ws", "explore@ws2"}
    assert ran(sh(repo, "dvc", "repro").stdout) == downstream | {"validate", "score", "report"}


def test_adding_a_style_trains_only_it(repo):
    run_block(repo, "own-style", {"~/Pictures/ink/*": "data/sample/openmoji/*"})
    set_params(repo, lambda raw: raw["styles"].update(yaml.safe_load(block("own-style-params"))["styles"]))
    log = run_block(repo, "own-style-repro")
    assert {s for s in ran(log) if s.split("@")[0] in ("filter", "caption", "encode", "train", "generate_style")} == {
        "filter@ink", "caption@ink", "encode@ink", "train@ink", "generate_style@ink"}
    # merges read models/lora, so they re-check (seconds), write the same files and their images stay
    assert not ran(log) & {"generate_base", "generate_combo@mix", "generate_combo@mix2"}
    assert "ink" in json.loads((repo / "reports/metrics.json").read_text())["models"]


def test_readme_snippets_for_pictures_and_captions(repo):
    sh(repo, sys.executable, "-c", block("load-lora"))
    sh(repo, sys.executable, "-c", block("load-tokens"))
    run_block(repo, "draw", {"flat=0.4": "lineart=0.4"})
    assert Image.open(repo / "cat.png").text["seed"] == "3"
    assert "inkstyle" not in run_block(repo, "prompts") and "aquastyle" in run_block(repo, "prompts")


def test_bad_params_stop_a_stage_with_one_line(repo):
    set_params(repo, lambda raw: raw["filter"].update(laplacian_min=-1))
    result = sh(repo, sys.executable, "-m", "stages.filter", "openmoji", check=False)
    set_params(repo, lambda raw: raw["filter"].update(laplacian_min=100))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: filter.laplacian_min = -1: Input should be greater than or equal to 0"]


def test_unknown_style_is_named(repo):
    result = sh(repo, sys.executable, "-m", "stages.filter", "anime", check=False)
    assert result.returncode == 2 and "unknown style 'anime'" in result.stderr
