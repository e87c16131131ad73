"""The cost of a sweep from recorded step times (sweeps/cost.py, emorl/bench/records.py)."""

import json
import re

import pytest

from emorl.bench import records
from emorl.cli import main
from sweeps.cost import estimate_text, finish_times, stretches, trial_costs
from sweeps.spec import Resources, expand, load_spec, with_settings
from sweeps.status import write_status

H200 = {"device": "cuda", "name": "NVIDIA H200", "torch": "2.11.0+cu130"}


def row(setting, batch, refine_steps, mode, step_s):
    return {"setting": setting, "batch": batch, "refine_steps": refine_steps, "mode": mode, "step_s": step_s}


def test_stretches_follow_the_curriculum():
    config = {"curriculum": {"refine_steps": 3, "milestones": [100000], "milestone_refine_steps": [1]},
              "trainer": {"max_steps": 300000}}
    assert [(s.refine_steps, s.steps) for s in stretches(config)] == [(3, 100000), (1, 200000)]
    assert [(s.refine_steps, s.steps) for s in stretches(config, 50000)] == [(3, 50000), (1, 200000)]
    assert [(s.refine_steps, s.steps) for s in stretches(config, 150000)] == [(1, 150000)]
    assert stretches(config, 300000) == []
    config["trainer"]["max_steps"] = 50000  # the milestone is never reached (Table 2 on CLEVR6)
    assert [(s.refine_steps, s.steps) for s in stretches(config)] == [(3, 50000)]


def test_finish_times_schedule_in_order_on_the_free_slot():
    assert finish_times([10, 10, 10], 2) == [10, 10, 20]
    assert finish_times([5, 5], 2, busy=[8, 1]) == [6, 11]  # the slot free at 1 first, then 6 < 8
    assert finish_times([], 3) == []


def test_records_merge_and_replace(tmp_path):
    path = tmp_path / "bench" / "step-times.json"
    records.record([row("clevr6", 32, 3, "graph", 0.05)], H200, path)
    records.record([row("clevr6", 32, 1, "graph", 0.03)], H200, path)
    records.record([row("clevr6", 32, 3, "graph", 0.04)], H200, path)  # a newer measurement replaces the older
    data = records.load(path)
    steps = data["machines"]["cuda | NVIDIA H200 | torch 2.11.0+cu130"]["steps"]
    assert {k: v["step_s"] for k, v in steps.items()} == {"clevr6 batch=32 I=3 graph": 0.04,
                                                          "clevr6 batch=32 I=1 graph": 0.03}
    assert [p.name for p in path.parent.iterdir() if p.suffix == ".tmp"] == []
    assert records.find_machines(data, "cuda", text="h200")[0][0].startswith("cuda | NVIDIA H200")
    assert records.find_machines(data, "cpu", text="h200") == []
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a step-time record file"):
        records.load(path)


def test_gpu_sweep_from_another_machines_records(tmp_path):
    """Table 2 on CLEVR6: 30 trials of 50000 steps at I = 3 (the milestone at 100k is never reached)."""
    path = tmp_path / "step-times.json"
    spec = with_settings(load_spec("table2_clevr6"), max_concurrent=4)
    plan = expand(spec, output=tmp_path / "sweep")
    missing = estimate_text(plan, cost_from="H200", records_path=path)
    assert "no cuda records on a machine matching 'H200'" in missing
    assert "emorl bench step --settings clevr6:3 --modes graph --batch-size 32 --device cuda" in missing
    assert "no estimate for 30 of 30 trials" in missing
    records.record([row("clevr6", 32, 3, "graph", 0.05), row("clevr6", 4, 3, "graph", 0.01)], H200, path)
    text = estimate_text(plan, cost_from="H200", records_path=path)
    # 50000 x 0.05 s = 2500 s = 41.7 min per trial; 30 trials = 20.8 trial-hours, 1 GPU and 4 CPUs each;
    # 4 at once: 8 rounds of 2500 s = 5.6 h.
    assert "clevr6/full x10: 50000 steps at I=3; 0.05 s/step at I=3; 41.7 min per trial" in text
    assert "clevr6/without_dualgru x10" in text and "~ (model differs from the benchmark: dual_gru=False)" in text
    assert ("total of 30 trials: 20.8 trial-hours = 83.3 CPU-hours (4 CPU per trial), 20.8 GPU-hours (1 GPU per "
            "trial); wall time 5.6 h at 4 at once (max_concurrent)") in text
    assert "no estimate" not in text and "record the missing" not in text
    # Trials part-way: the rest is what is still to run.
    write_status(plan.trials[0].output_dir, state="running", step=25000)
    write_status(plan.trials[1].output_dir, state="finished", step=50000)
    text = estimate_text(plan, cost_from="H200", slots=30, records_path=path)
    assert "wall time 41.7 min at 30 at once (as given)" in text
    assert f"still to run (from the trials' recorded steps): {(28 * 2500 + 1250) / 3600:.1f} trial-hours" in text


def test_cpu_sweep_uses_this_machine_and_the_curriculum(tmp_path):
    """Table 1's CLEVR6 EfficientMORL: I = 3 for 100k steps, then I = 1 to 300k; I = 1 has no record yet."""
    path = tmp_path / "step-times.json"
    (tmp_path / "spec.yaml").write_text("name: clevr\nexperiment: clevr6\nseeds: 5\n")
    spec = with_settings(load_spec(tmp_path / "spec.yaml"), resources=Resources(1.0, 0.0), max_concurrent=2)
    plan = expand(spec, output=tmp_path / "sweep")
    here = records.machine("cpu", threads=1)
    records.record([row("clevr6", 32, 3, "fast", 2.0)], here, path)
    text = estimate_text(plan, records_path=path)
    assert f"machine: {records.machine_key(here)}" in text
    assert "clevr6/default x5: 100000 steps at I=3, 200000 steps at I=1; no record for I=1 (clevr6, batch 32, fast)" \
        in text
    assert "emorl bench step --settings clevr6:1 --modes fast --batch-size 32 --device cpu --threads 1" in text
    records.record([row("clevr6", 32, 1, "fast", 1.0)], here, path)
    (cost,) = {c.trial.id.rsplit("/", 1)[0]: c for c in trial_costs(plan, records.load(path))}.values()
    assert cost.total_s == 100000 * 2.0 + 200000 * 1.0
    text = estimate_text(plan, records_path=path)
    assert "2 s/step at I=3, 1 s/step at I=1; 4.6 days per trial" in text  # 400000 s
    assert "wall time 13.9 days at 2 at once (max_concurrent)" in text  # 3 rounds of 400000 s
    # Another thread count is another machine: no records for it.
    plan2 = expand(with_settings(spec, resources=Resources(2.0, 0.0)), output=tmp_path / "sweep")
    assert "no records on this machine" in estimate_text(plan2, records_path=path)


def test_bench_step_records_and_dry_run_reads_them(tmp_path, monkeypatch, capsys):
    """`emorl bench step` at batch 1 records its row; `emorl sweep --dry-run` then prices a spec with it."""
    monkeypatch.setenv("EMORL_OUTPUT_DIR", str(tmp_path / "outputs"))
    assert main(["bench", "step", "--settings", "tetrominoes:0", "--modes", "fast", "--batch-size", "1",
                 "--warmup", "0", "--repeats", "1", "--threads", "1", "--no-forward"]) == 0
    printed = capsys.readouterr().out
    stored = json.loads((tmp_path / "outputs" / "bench" / "step-times.json").read_text())
    (entry,) = stored["machines"].values()
    (key, found), = entry["steps"].items()
    assert key == "tetrominoes batch=1 I=0 fast" and entry["machine"]["threads"] == 1
    assert f"| tetrominoes | 1 | 0 | fast | nan | {found['step_s']:.4f} |" in printed
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: priced\nexperiment: tetrominoes\nseeds: 3\noverrides: [data.batch_size=1, "
                    "curriculum.refine_steps=0, curriculum.test_refine_steps=0, trainer.max_steps=1000]\n"
                    "resources: {cpus: 1, gpus: 0}\nmax_concurrent: 1\n")
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    per_trial = 1000 * found["step_s"]
    assert re.search(r"tetrominoes/default x3: 1000 steps at I=0; [0-9.]+ s/step at I=0; ", out)
    assert f"total of 3 trials: {3 * per_trial / 3600:.1f} trial-hours" in out
