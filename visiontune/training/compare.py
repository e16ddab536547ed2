"""Which phase 2 method suits a dataset: all of them from one warm head, side by side.

`compare_methods` trains phase 1 once, keeps its weights, and runs each
method's phase 2 from those same weights on a fresh copy of the classifier,
so the methods differ only in what phase 2 trains. Phase 1 alone is the
linear probe. Each row reports validation accuracy, the trainable parameters
of phase 2, and the time of phase 2 and of the whole recipe (phase 1 + 2).
"""

import dataclasses
import time

import keras
import numpy as np

from visiontune.common import targets
from visiontune.evaluation import metrics as evaluation
from visiontune.training import recipe

# Name -> `fine_tune` arguments of phase 2. "gradual" is two-phase with gradual unfreezing.
VARIANTS = {
    "two-phase": dict(method="two-phase"),
    "gradual": dict(method="two-phase", gradual=True),
    "bn-bias": dict(method="bn-bias"),
    "lora": dict(method="lora"),
}


@dataclasses.dataclass
class MethodComparison:
    """The rows of a comparison, plus the models to look at afterwards.

    `rows`: one dict per method: `method`, `val_accuracy`, `trainable_params`
    (of its last phase; the head's for the linear probe), `phase2_s` and
    `total_s`. `start`: the classifier after phase 1 (the linear probe).
    `models`: method name -> its fine-tuned classifier.
    """

    rows: list
    start: object
    models: dict

    def table(self):
        """The rows as a Markdown table."""
        lines = ["| method | val accuracy | trainable params | phase 2 s | total s |",
                 "|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['val_accuracy']:.3f} | {r['trainable_params']:,} | "
                  f"{r['phase2_s']:.1f} | {r['total_s']:.1f} |" for r in self.rows]
        return "\n".join(lines)


def compare_methods(build, train, val, *, methods=tuple(VARIANTS), head_epochs=10,
                    finetune_epochs=10, unfreeze_blocks=2, learning_rates=None,
                    cache="auto", seed=0, verbose=0, **fine_tune_kwargs):
    """Trains phase 1 once, then each method's phase 2 from the same weights.

    Args:
        build: A function returning a new, identical classifier (e.g. a
            `functools.partial` of `build_classifier`). Called once per method,
            because LoRA changes the layers it adapts.
        train, val: Training and validation data, as for `fine_tune`.
        methods: Names from `VARIANTS`. Gradual unfreezing widens the region
            one block every `finetune_epochs // (unfreeze_blocks + 1)` epochs.
        head_epochs, finetune_epochs, unfreeze_blocks: As for `fine_tune`; the
            same region of top blocks for every method.
        learning_rates: Method name -> phase 2 rate (default
            `recipe.default_finetune_lr` of the method).
        cache, seed: As for `fine_tune`; `seed` also seeds Keras before each
            training, so a comparison repeats exactly on the same machine.
        verbose: Print one line per method (`fine_tune` gets `verbose=0`
            unless `fine_tune_kwargs` says otherwise).
        **fine_tune_kwargs: Passed to every `fine_tune` call.

    Returns:
        A `MethodComparison`, whose first row is the linear probe.

    Example:

    >>> build = functools.partial(visiontune.build_classifier, "efficientnet_lite0", 5)
    >>> result = compare_methods(build, train_ds, val_ds)
    >>> print(result.table())
    """
    unknown = set(methods) - set(VARIANTS)
    if unknown:
        raise ValueError(f"Unknown methods {sorted(unknown)}; expected some of "
                         f"{list(VARIANTS)}.")
    common = dict(cache=cache, seed=seed, **{"verbose": 0, **fine_tune_kwargs})
    keras.utils.set_random_seed(seed)
    start = build()
    history = recipe.fine_tune(start, train, val, head_epochs=head_epochs,
                                 finetune_epochs=0, **common)
    head_s = history.phases[0]["wall_time_s"]
    rows = [_row("linear probe", start, val, history.phases[0]["trainable_params"], 0.0,
                 head_s)]
    if verbose:
        print(f"linear probe (phase 1): val accuracy {rows[0]['val_accuracy']:.3f}, "
              f"{head_s:.1f} s", flush=True)
    weights, models = start.get_weights(), {}
    for name in methods:
        options = dict(VARIANTS[name])
        gradual = max(1, finetune_epochs // (unfreeze_blocks + 1)) if options.pop(
            "gradual", False) else 0
        rate = (learning_rates or {}).get(name)
        keras.utils.set_random_seed(seed)
        model = build()
        model.set_weights(weights)
        began = time.perf_counter()
        history = recipe.fine_tune(model, train, val, head_epochs=0,
                                     finetune_epochs=finetune_epochs, finetune_lr=rate,
                                     unfreeze_blocks=unfreeze_blocks, gradual_epochs=gradual,
                                     **options, **common)
        seconds = time.perf_counter() - began
        trainable = history.phases[-1]["trainable_params"]
        rows.append(_row(name, model, val, trainable, seconds, head_s + seconds))
        models[name] = model
        if verbose:
            print(f"{name}: val accuracy {rows[-1]['val_accuracy']:.3f}, {seconds:.1f} s",
                  flush=True)
    return MethodComparison(rows, start, models)


def _row(name, model, val, trainable, phase2_s, total_s):
    if isinstance(val, tuple):  # An (x, y) pair of arrays, as `fine_tune` accepts.
        probs, labels = evaluation.probabilities(model, val[0]), targets.class_indices(val[1])
    else:
        _, labels, probs = evaluation.predict(model, val)
    return {"method": name, "val_accuracy": float(np.mean(probs.argmax(axis=1) == labels)),
            "trainable_params": int(trainable), "phase2_s": phase2_s, "total_s": total_s}
