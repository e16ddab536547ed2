"""Linear-probe baseline: logistic regression on a frozen backbone's pooled features.

Fine-tuning should never do worse than this. It reproduces the reference figure
in ../shared/MEASUREMENTS.md (0.88 on flowers-mini with EfficientNet-Lite0):

    python scripts/linear_probe.py --data ../shared/datasets/flowers-mini
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

import visiontune  # noqa: E402
from visiontune import backbones, data  # noqa: E402


def pooled_features(backbone_name, splits):
    spec = backbones.get_spec(backbone_name)
    base = backbones.create_backbone(spec, "imagenet")
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
    probe = LogisticRegression(max_iter=2000, C=1.0).fit(x_train, y_train)
    accuracy = float(np.mean(probe.predict(x_val) == y_val))
    print(f"{args.backbone} linear probe on {args.data}: val_accuracy {accuracy:.3f} "
          f"({len(y_train)} train / {len(y_val)} val images, "
          f"{time.perf_counter() - began:.1f} s)")


if __name__ == "__main__":
    main()
