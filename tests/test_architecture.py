"""The package's shape: its layers, its public names, and the helpers every layer shares."""

import ast
import os
import re
import subprocess
import sys
import tomllib

import keras
import numpy as np
import pytest
import tensorflow as tf

import visiontune
from visiontune.common import checks, targets
from visiontune.evaluation import metrics as evaluation
from visiontune.training import compare
from conftest import color_images, tiny_backbone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.dirname(visiontune.__file__)


def _contract():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        (contract,) = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    return contract


def _contract_layers():
    return [tuple(part.strip() for part in layer.split("|")) for layer in _contract()["layers"]]


def test_the_readme_diagram_is_the_import_linter_contract():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("## Architecture\n", 1)[1].split("\n## ", 1)[0]
    diagram = section.split("```text\nvisiontune/\n", 1)[1].split("```", 1)[0]
    drawn = [tuple(name.strip().rstrip("/") for name in line.split("  ", 2)[1].split("|"))
             for line in diagram.splitlines()]
    assert drawn == _contract_layers()
    # And every layer is a subpackage, and every subpackage a layer.
    subpackages = {name for name in os.listdir(PACKAGE)
                   if os.path.isfile(os.path.join(PACKAGE, name, "__init__.py"))}
    assert subpackages == {name for layer in drawn for name in layer}


def _statements(path):
    with open(path, encoding="utf-8") as f:
        return [ast.dump(node) for node in ast.parse(f.read()).body
                if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]


def _entry_module(command):
    """The statements of a `python -m` entry point that only runs `cli/<command>.py`."""
    return [ast.dump(node) for node in ast.parse(
        f"import sys\n\nfrom visiontune.cli.{command} import main\n\n"
        f"if __name__ == '__main__':\n    sys.exit(main())\n").body]


def test_entry_modules_only_run_their_command():
    """The modules outside the layers (`exhaustive_ignores`) are exactly the top-level
    entry points, and each only calls its `cli/` module; so does `export/__main__.py`."""
    top = {n[:-3] for n in os.listdir(PACKAGE) if n.endswith(".py") and n != "__init__.py"}
    assert set(_contract()["exhaustive_ignores"]) == top
    for command in top:
        assert _statements(os.path.join(PACKAGE, command + ".py")) == _entry_module(command)
    assert _statements(os.path.join(PACKAGE, "export", "__main__.py")) == _entry_module("export")


def test_atomic_writing_is_a_leaf_and_common_imports_only_common():
    """`common` is the bottom layer; `atomic` breaks the old lite -> rundir -> ... cycle by
    importing nothing from visiontune at all."""
    for name in os.listdir(os.path.join(PACKAGE, "common")):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(PACKAGE, "common", name), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        assert all(node.level == 0 for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom)), name  # No relative imports.
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and node.module} | {alias.name for node in ast.walk(tree)
                                        if isinstance(node, ast.Import) for alias in node.names}
        from_visiontune = {m for m in imported if m.split(".")[0] == "visiontune"}
        assert from_visiontune <= {"visiontune.common"}, (name, from_visiontune)
        if name == "atomic.py":
            assert not from_visiontune


def test_public_names_come_from_the_top_level():
    names = {"BACKBONES", "BackboneSpec", "Phase", "PhasedHistory", "WeightsUnavailableError",
             "build_classifier", "count_blocks", "enable_lora", "find_backbone", "fine_tune",
             "freeze_backbone", "interpolate", "list_backbones", "load_data",
             "load_image_folder", "lr_find", "merge_lora", "trainable_summary",
             "unfreeze_top_blocks"}  # Before the restructure.
    added = {"TrainConfig", "run", "save_model", "compare_methods", "explain"}
    assert names | added <= set(visiontune.__all__)
    assert visiontune.run.__module__ == "visiontune.runs.run"
    assert visiontune.TrainConfig.__module__ == "visiontune.runs.config"
    assert visiontune.save_model.__module__ == "visiontune.export.saving"
    assert visiontune.compare_methods.__module__ == "visiontune.training.compare"
    # The functions keep their names although commands of the same names exist.
    assert callable(visiontune.interpolate) and callable(visiontune.lr_find)
    assert callable(visiontune.explain)
    assert visiontune.explain.__module__ == "visiontune.evaluation.explain"
    assert visiontune.interpolate.__module__ == "visiontune.evaluation.interpolate"
    assert visiontune.lr_find.__module__ == "visiontune.training.lr_find"


@pytest.mark.parametrize("command", ["interpolate", "lr_find", "explain"])
def test_commands_named_like_functions_run_without_the_runpy_warning(command):
    """The old layout needed a warnings filter: `visiontune/__init__.py` imported these
    modules before `python -m` ran them. Now nothing does, and warnings are errors here."""
    result = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", f"visiontune.{command}", "--help"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    with open(os.path.join(PACKAGE, "__init__.py"), encoding="utf-8") as f:
        assert "filterwarnings" not in f.read()


def test_labels_of_shape_n_1_are_sparse_everywhere():
    assert targets.is_sparse(np.zeros(4)) and targets.is_sparse(np.zeros((4, 1)))
    assert not targets.is_sparse(np.zeros((4, 3)))
    assert targets.is_sparse(tf.TensorSpec((None, 1), tf.int32))
    assert not targets.is_sparse(tf.TensorSpec((None, 3), tf.float32))
    assert not targets.is_sparse(tf.TensorSpec(None, tf.float32))  # unknown rank
    np.testing.assert_array_equal(targets.class_indices(np.array([[2], [0], [1]])), [2, 0, 1])
    np.testing.assert_array_equal(targets.class_indices(np.eye(3)[[2, 0, 1]]), [2, 0, 1])


def _model():
    keras.utils.set_random_seed(0)
    model = visiontune.build_classifier(tiny_backbone(), 3, None, dropout=0.0)
    visiontune.freeze_backbone(model)
    return model


@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1}, {"cache": "memory"}],
                         ids=["plain", "label-smoothing", "cached"])
def test_n_1_labels_train_and_score_as_sparse_labels_do(options):
    """Before one helper decided, `fine_tune` took `(batch, 1)` dataset labels for one-hot
    (a one-column categorical loss), `evaluation.predict` took their argmax (always 0) and
    `compare` compared `(N,)` predictions with `(N, 1)` labels, an `(N, N)` table."""
    x, y = color_images(8, size=32)
    results = []
    for labels in (y, y.reshape(-1, 1)):
        data = tf.data.Dataset.from_tensor_slices((x, labels)).batch(8)
        model = _model()
        history = visiontune.fine_tune(model, data, data, head_epochs=2, finetune_epochs=0,
                                       shuffle=False, verbose=0, **options)
        _, scored, probs = evaluation.predict(model, data)
        row = compare._row("probe", model, (x, labels), 0, 0.0, 0.0)
        results.append((history.history["loss"], scored, probs, row["val_accuracy"]))
    (loss, scored, probs, accuracy), (loss_n1, scored_n1, probs_n1, accuracy_n1) = results
    np.testing.assert_allclose(loss_n1, loss, rtol=1e-6)
    np.testing.assert_array_equal(scored_n1, y)
    np.testing.assert_array_equal(scored, y)
    np.testing.assert_allclose(probs_n1, probs, atol=1e-6)
    assert accuracy_n1 == accuracy == pytest.approx(np.mean(probs.argmax(1) == y))


def test_check_int_refuses_bools_and_fractions_and_names_the_argument():
    assert checks.check_int(np.int64(3), "lora_rank", 1) == 3
    for bad in (True, 2.0, 0, "3"):
        with pytest.raises(ValueError, match=re.escape(f"Received: lora_rank={bad!r}.")):
            checks.check_int(bad, "lora_rank", 1)
    with pytest.raises(ValueError, match=r"Expected `unfreeze_blocks` between 0 and 7 for b0\."):
        checks.check_int(9, "unfreeze_blocks", 0, 7, " for b0")


def test_n_1_array_labels_load_as_class_indices():
    """`load_data((x, y))` took `(N, 1)` labels for multi-hot: one class named '0'."""
    x, y = color_images(6, size=32)
    flat = visiontune.load_data((x, y), 32, seed=0)
    column = visiontune.load_data((x, y.reshape(-1, 1)), 32, seed=0)
    assert column.class_names == flat.class_names == ["0", "1", "2"]
    assert column.train_files.labels == flat.train_files.labels
    (_, labels), = column.val.unbatch().batch(100).take(1)
    assert labels.dtype == tf.int32 and labels.shape.rank == 1
