"""Honest accuracy: intervals on the reported figure, and no decision that reads it."""

import ast
import json
import os
import shutil
import sys

import keras
import numpy as np
import pytest

from visiontune.evaluation import metrics as evaluation
from visiontune.cli import train
from conftest import write_image_folder

FAST = ["--backbone", "mobilenetv2", "--weights", "none", "--image-size", "32",
        "--head-epochs", "3", "--finetune-epochs", "2", "--batch-size", "8", "--quiet"]
# Real (packaged) weights, so that the model learns and its validation results mean something.
LEARNS = ["--backbone", "efficientnet_lite0", "--image-size", "64", "--head-lr", "0.01",
          "--head-epochs", "4", "--finetune-epochs", "2", "--batch-size", "8", "--quiet"]
SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "scripts")


@pytest.mark.parametrize("successes, trials, low, high", [
    (5, 10, 0.2366, 0.7634),     # textbook case: p = 0.5, n = 10
    (0, 10, 0.0, 0.2775),        # z²/(n + z²): no collapse to a point at 0 successes
    (10, 10, 0.7225, 1.0),
    (94, 100, 0.8752, 0.9722),
    (1, 1, 0.2065, 1.0),
])
def test_wilson_interval_matches_known_values(successes, trials, low, high):
    got = evaluation.wilson_interval(successes, trials)
    assert got == pytest.approx((low, high), abs=1e-4)
    p = successes / trials
    assert got[0] <= p <= got[1]


def test_wilson_interval_narrows_with_more_images():
    widths = [np.subtract(*evaluation.wilson_interval(9 * n, 10 * n)[::-1]) for n in (1, 10, 100)]
    assert widths[0] > widths[1] > widths[2] > 0
    assert evaluation.wilson_interval(0, 0) == (0.0, 1.0)


def _split_folder(root, seed=0):
    """train/ and val/ class folders of colour images."""
    write_image_folder(os.path.join(root, "train"), n_per_class=10, seed=seed)
    write_image_folder(os.path.join(root, "val"), n_per_class=4, seed=seed + 1)
    return root


def _permute_val_labels(src, dst):
    """A copy whose validation images are moved to the next class's folder."""
    shutil.copytree(src, dst)
    val = os.path.join(dst, "val")
    classes = sorted(os.listdir(val))
    moved = {c: os.listdir(os.path.join(val, c)) for c in classes}
    for i, c in enumerate(classes):
        target = classes[(i + 1) % len(classes)]
        for name in moved[c]:
            os.replace(os.path.join(val, c, name), os.path.join(val, target, f"from-{c}-{name}"))
    return dst


def _weights(path):
    return keras.saving.load_model(path).get_weights()


def test_no_decision_in_a_run_reads_the_validation_labels(tmp_path, capsys):
    data = _split_folder(str(tmp_path / "photos"))
    permuted = _permute_val_labels(data, str(tmp_path / "permuted"))
    runs = []
    for name, folder in (("a", data), ("b", permuted)):
        out = str(tmp_path / name)
        assert train.main(["--data", folder, "--output", out, "--seed", "3", *LEARNS]) == 0
        runs.append(out)
    metrics = [json.load(open(os.path.join(r, "metrics.json"))) for r in runs]
    # The model learned the task, so the permuted labels are reported as mostly wrong ...
    assert metrics[0]["val_accuracy"] >= 0.75 and metrics[1]["val_accuracy"] <= 0.25
    # ... but the trained model does not depend on them.
    for a, b in zip(_weights(os.path.join(runs[0], "model.keras")),
                    _weights(os.path.join(runs[1], "model.keras"))):
        np.testing.assert_array_equal(a, b)


def test_run_reports_the_interval_and_the_count(tmp_path, capsys):
    data = _split_folder(str(tmp_path / "photos"))
    out = str(tmp_path / "run")
    argv = ["--data", data, "--output", out, *[f for f in FAST if f != "--quiet"]]
    assert train.main(argv) == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["val_images"] == 12
    correct = round(metrics["val_accuracy"] * 12)
    assert metrics["val_accuracy_ci95"] == pytest.approx(
        list(evaluation.wilson_interval(correct, 12)))
    low, high = metrics["val_accuracy_ci95"]
    assert f"val_accuracy {metrics['val_accuracy']:.3f} (95% CI {low:.2f}–{high:.2f}, " \
           f"12 images)" in capsys.readouterr().out


@pytest.mark.slow  # trains three times or more
def test_transfer_suite_runs_end_to_end_and_reuses_stored_results(tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.syspath_prepend(os.path.abspath(SCRIPTS))
    import transfer_suite

    data = _split_folder(str(tmp_path / "tiny"))
    results = str(tmp_path / "results.json")
    argv = ["--datasets", data, "--seeds", "2", "--backbone", "mobilenetv2",
            "--weights", "none", "--image-size", "32", "--recipe-epochs", "1,1",
            "--common", "--head-epochs 1 --finetune-epochs 1 --batch-size 8",
            "--variant", "fast-head=--head-lr 0.01", "--results", results]
    found = transfer_suite.main(argv)
    rows = json.load(open(results))
    # probe and two visiontune recipes per seed, the keras.io recipe once.
    methods = sorted(json.loads(k)[1] for k in rows)
    assert methods == sorted(["probe"] * 2 + ["default"] * 2 + ["fast-head"] * 2 + ["keras.io"])
    assert all(0 <= r["val_accuracy"] <= 1 and r["val_images"] == 12 for r in rows.values())
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| dataset | train / val | probe | keras.io | default | fast-head | "
                        "keras.io − probe | default − probe | fast-head − probe |")
    cells = [c.strip() for c in next(line for line in lines
                                     if line.startswith(f"| {data} |")).split("|")[1:-1]]
    assert cells[1] == "30 / 12"
    acc = {m: [found[(data, m)][s]["val_accuracy"] for s in (0, 1)]
           for m in ("probe", "default")}
    assert cells[4].startswith(f"{np.mean(acc['default']):.3f} ± ") and cells[4].endswith("(2)")
    assert cells[3].endswith("(1)")  # keras.io: seed 0 only
    assert cells[7] == f"{100 * (np.mean(acc['default']) - np.mean(acc['probe'])):+.1f}"
    keras_io = found[(data, "keras.io")][0]["val_accuracy"]
    assert cells[6] == f"{100 * (keras_io - found[(data, 'probe')][0]['val_accuracy']):+.1f}"

    def must_not_run(*args, **kwargs):
        raise AssertionError("a stored result was computed again")

    for name in ("run_probe", "run_keras_io", "run_variant"):
        monkeypatch.setattr(transfer_suite, name, must_not_run)
    again = transfer_suite.main(argv)
    assert again == found
    # Another code version is another result: a key without it would reuse stale numbers.
    calls = []
    monkeypatch.setattr(transfer_suite, "code_version", lambda *a, **k: "edited")
    monkeypatch.setattr(transfer_suite, "run_probe",
                        lambda *a: calls.append("probe") or dict(found[(data, "probe")][0]))
    monkeypatch.setattr(transfer_suite, "run_variant",
                        lambda config: calls.append("variant") or dict(found[(data, "default")][0]))
    monkeypatch.setattr(transfer_suite, "run_keras_io",
                        lambda *a: calls.append("keras.io") or dict(found[(data, "keras.io")][0]))
    transfer_suite.main(argv)
    assert sorted(calls) == sorted(["probe"] * 2 + ["variant"] * 4 + ["keras.io"])
    monkeypatch.undo()
    monkeypatch.syspath_prepend(os.path.abspath(SCRIPTS))
    # A changed setting is a new result: only it runs.
    calls = []
    for name in ("run_probe", "run_keras_io"):
        monkeypatch.setattr(transfer_suite, name, must_not_run)
    monkeypatch.setattr(transfer_suite, "run_variant",
                        lambda config: calls.append(config) or {"val_accuracy": 0.5,
                                                                 "val_images": 12,
                                                                 "seconds": 1.0})
    transfer_suite.main([*argv[:-4], "--variant", "fast-head=--head-lr 0.02",
                         "--results", results])
    assert [c.head_lr for c in calls] == [0.02, 0.02]
    assert sys.modules["transfer_suite"] is transfer_suite


def test_suite_code_version_ignores_layout_but_not_behaviour(monkeypatch):
    """Stored results survive a lint fix or a comment, and never a change in what runs."""
    monkeypatch.syspath_prepend(os.path.abspath(SCRIPTS))
    import transfer_suite

    code = 'def rate(n):\n    """Doc."""\n    return 3e-4 * min(1.0, n / 1000)  # peak\n'
    relaid = ('def rate(n):\n    """Another docstring."""\n    # a comment\n'
              '    return (3e-4\n            * min(1.0, n / 1000))\n')
    changed = 'def rate(n):\n    """Doc."""\n    return 1e-4 * min(1.0, n / 1000)\n'
    assert transfer_suite._semantics(relaid) == transfer_suite._semantics(code)
    assert transfer_suite._semantics(changed) != transfer_suite._semantics(code)
    # A module docstring, and a function left with only its docstring, stay valid trees.
    assert transfer_suite._semantics('"""Module."""\ndef f():\n    """Only this."""\n') == \
        transfer_suite._semantics("def f():\n    pass\n")


def _import_closure(package, *modules):
    """Package-relative paths of `modules` and every visiontune module they import, read
    from the source (imports inside functions too), as `code_version` names them."""
    seen, todo = set(), list(modules)
    while todo:
        relative = todo.pop()
        if relative in seen:
            continue
        seen.add(relative)
        with open(os.path.join(package, relative), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [f"{node.module}.{a.name}" for a in node.names] + [node.module]
                     if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                parts = name.split(".")
                if parts[0] != "visiontune":
                    continue
                path = os.path.join(*parts[1:]) if len(parts) > 1 else ""
                for candidate in (path + ".py", os.path.join(path, "__init__.py")):
                    if path and os.path.isfile(os.path.join(package, candidate)):
                        todo.append(candidate.replace(os.sep, "/"))
    return seen


def test_the_suite_digests_every_module_its_runs_execute(monkeypatch):
    """A training run executes `runs/run.py` and `runs/flags.py` and what they import; the
    baselines, `data/sources.py` and `backbones/registry.py`. A module they execute that
    the digest leaves out would let an edit keep stale numbers."""
    monkeypatch.syspath_prepend(os.path.abspath(SCRIPTS))
    import transfer_suite

    package = os.path.dirname(evaluation.__file__).rsplit(os.sep, 1)[0]
    training = _import_closure(package, "runs/run.py", "runs/flags.py")
    # Executed for a constant, log lines or plots only: they do not change a number.
    harmless = {"evaluation/interpolate.py", "evaluation/plots.py", "common/quiet_start.py",
                "evaluation/explain.py"}  # Grad-CAM: for plots only.
    skipped = {m for m in training if transfer_suite._within(m, transfer_suite.NOT_TRAINING)}
    assert skipped <= harmless, skipped - harmless
    baseline = _import_closure(package, "data/sources.py", "backbones/registry.py")
    assert all(transfer_suite._within(m, transfer_suite.BASELINE_MODULES)
               for m in baseline - {"data/__init__.py", "backbones/__init__.py",
                                    "common/__init__.py"}), baseline
    assert len(training) > 30 and len(baseline) > 10


def test_results_are_carried_over_a_refactor_only_when_fresh_rows_equal_them(monkeypatch):
    monkeypatch.syspath_prepend(os.path.abspath(SCRIPTS))
    import carry_over_results as carry
    import transfer_suite

    def key(dataset, method, seed, version):
        return transfer_suite.Results.key(dataset, method, {"lr": 1}, seed, version)

    stored = {key("a", "default", 0, "d-old"): {"val_accuracy": 0.9, "after_head": 0.8},
              key("a", "default", 1, "d-old"): {"val_accuracy": 0.8, "after_head": 0.7},
              key("b", "default", 0, "d-old"): {"val_accuracy": 0.6, "after_head": 0.5},
              key("a", "default", 0, "d-older"): {"val_accuracy": 0.5},
              key("a", "keras.io", 0, "k-old"): {"val_accuracy": 0.7, "seconds": 99}}
    fresh = {key("a", "default", 0, "d-new"): {"val_accuracy": 0.9, "after_head": 0.8,
                                               "seconds": 5},
             key("a", "default", 1, "d-new"): {"val_accuracy": 0.8, "after_head": 0.7,
                                               "seconds": 5}}
    versions = {"default": "d-new", "keras.io": "k-new", "probe": "p-new"}
    added = carry.carry_over(stored, fresh, {"default": "d-old"}, {"keras.io": "k-old"},
                             versions)
    assert set(added) == {key("a", "default", 0, "d-new"), key("a", "default", 1, "d-new"),
                          key("b", "default", 0, "d-new"), key("a", "keras.io", 0, "k-new")}
    assert [added[key(d, "default", s, "d-new")]["carried_over_from"]["rerun"]
            for d, s in (("a", 0), ("a", 1), ("b", 0))] == [True, True, False]
    carried = added[key("a", "keras.io", 0, "k-new")]
    assert carried["seconds"] == 99 and carried["carried_over_from"]["rerun"] is False
    assert carried["carried_over_from"]["version"] == "k-old"
    assert "2 rows of default were rerun" in carried["carried_over_from"]["evidence"]
    # A fresh row that differs anywhere but in its timings carries nothing over ...
    changed = {**fresh, key("a", "default", 1, "d-new"): {"val_accuracy": 0.8,
                                                          "after_head": 0.71}}
    with pytest.raises(SystemExit, match="a default seed 1: stored"):
        carry.carry_over(stored, changed, {"default": "d-old"}, {}, versions)
    # ... nor do fresh rows at a digest that is not the code's now,
    with pytest.raises(SystemExit, match="at digest d-new, the code now at d-newer"):
        carry.carry_over(stored, fresh, {"default": "d-old"}, {},
                         {**versions, "default": "d-newer"})
    # ... nor a verified method without fresh rows.
    with pytest.raises(SystemExit, match="no fresh probe rows"):
        carry.carry_over(stored, fresh, {"probe": "p-old"}, {}, versions)


def test_suite_keys_leave_out_a_new_setting_at_its_neutral_value(monkeypatch):
    """Adding --backbone-arg must not orphan the stored rows; using it must be a new key."""
    monkeypatch.syspath_prepend(SCRIPTS)
    import transfer_suite

    args = transfer_suite.parse_args(["--backbone", "mobilenet"])
    plain = transfer_suite.settings_of(transfer_suite.variant_config("builtin:digits", 0, "",
                                                                     args))
    assert "backbone_args" not in plain and plain["backbone"] == "mobilenet"
    # Nor does the label-issue pass, on or off: it decides no number the suite stores.
    assert transfer_suite.settings_of(transfer_suite.variant_config(
        "builtin:digits", 0, "--no-label-issues", args)) == plain
    narrow = transfer_suite.settings_of(transfer_suite.variant_config(
        "builtin:digits", 0, "--backbone-arg alpha=0.5", args))
    assert narrow == {**plain, "backbone_args": {"alpha": 0.5}}
