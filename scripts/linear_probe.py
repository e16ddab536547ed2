"""Linear-probe baseline: logistic regression on a frozen backbone's pooled features.

Fine-tuning should never do worse than this. The inverse penalty C is chosen by
stratified 5-fold cross-validation on the training images only (never on the
validation images that are reported), from a grid of 13 values, 1e-4 to 1e2:

    python scripts/linear_probe.py --data ../shared/datasets/flowers-mini

`scripts/transfer_suite.py` uses `pooled_features` and `fit_probe` from here.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import visiontune  # noqa: E402
from visiontune.backbones import registry as backbones  # noqa: E402
from visiontune.data import sources as data

C_GRID = np.logspace(-4, 2, 13)


def pooled_features(backbone_name, splits, weights="imagenet"):
    """Returns `((x_train, y_train), (x_val, y_val))`: global-average-pooled features.

    The images come from visiontune's own pipelines (same resize and crop),
    and the backbone's preprocessing is the one visiontune puts in its models.
    """
    spec = backbones.get_spec(backbone_name)
    size = int(splits.train.element_spec[0].shape[1])
    base = backbones.create_backbone(spec, weights, size)
    normalise = backbones.preprocessing_layer(spec.preprocessing)
    inputs = keras.Input(base.input_shape[1:])
    x = normalise(inputs) if normalise is not None else inputs
    extractor = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(base(x)))

    def run(ds):
        feats, labels = [], []
        for images, y in ds:
            feats.append(extractor.predict_on_batch(images))
            labels.append(np.asarray(y))
        return np.concatenate(feats), np.concatenate(labels)

    return run(splits.train), run(splits.val)


def fit_probe(x_train, y_train, seed=0):
    """Standardised features, then logistic regression with C chosen by 5-fold CV on train."""
    folds = min(5, int(np.bincount(y_train).min()))
    search = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
        {"logisticregression__C": C_GRID},
        cv=StratifiedKFold(max(folds, 2), shuffle=True, random_state=seed), n_jobs=1)
    return search.fit(x_train, y_train)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="builtin:digits", help="folder or builtin:digits")
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        choices=visiontune.list_backbones())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = backbones.get_spec(args.backbone).default_size
    splits = data.load_data(args.data, size, batch_size=32, seed=args.seed)
    began = time.perf_counter()
    (x_train, y_train), (x_val, y_val) = pooled_features(args.backbone, splits)
    probe = fit_probe(x_train, y_train, args.seed)
    accuracy = float(np.mean(probe.predict(x_val) == y_val))
    print(f"{args.backbone} linear probe on {args.data}: val_accuracy {accuracy:.3f} "
          f"(C={probe.best_params_['logisticregression__C']:g} by 5-fold CV on train; "
          f"{len(y_train)} train / {len(y_val)} val images, "
          f"{time.perf_counter() - began:.1f} s)")


if __name__ == "__main__":
    main()
