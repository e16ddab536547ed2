"""Phase 1 alone, on cached features: how many head epochs, and does label smoothing help?

Trains visiontune's head (Dropout 0.2, Dense softmax, L2 1e-4, Adam 3e-3, batch
32) on Lite0's frozen pooled features for each number of epochs and label
smoothing, over several seeds, and prints the validation accuracy. The features
are computed once per dataset, so the whole grid takes seconds after that. The
README's "Defaults" section quotes it:

    python scripts/head_on_features.py --data ../shared/datasets/busi
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import linear_probe  # noqa: E402
from visiontune.data import sources as data  # noqa: E402


def head_accuracy(features, epochs, label_smoothing, seed):
    (x_train, y_train), (x_val, y_val) = features
    classes = int(y_train.max()) + 1
    keras.utils.set_random_seed(seed)
    head = keras.Sequential([
        keras.Input((x_train.shape[1],)), keras.layers.Dropout(0.2),
        keras.layers.Dense(classes, activation="softmax",
                           kernel_regularizer=keras.regularizers.L2(1e-4))])
    head.compile(keras.optimizers.Adam(3e-3),
                 keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
                 metrics=["accuracy"])
    head.fit(x_train, np.eye(classes)[y_train], batch_size=32, epochs=epochs, verbose=0)
    return head.evaluate(x_val, np.eye(classes)[y_val], verbose=0, return_dict=True)["accuracy"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="builtin:digits")
    parser.add_argument("--epochs", default="10,30")
    parser.add_argument("--label-smoothing", default="0,0.1")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    splits = data.load_data(args.data, 224, seed=0, verbose=False)
    features = linear_probe.pooled_features("efficientnet_lite0", splits)
    for epochs in (int(e) for e in args.epochs.split(",")):
        for smoothing in (float(s) for s in args.label_smoothing.split(",")):
            scores = [head_accuracy(features, epochs, smoothing, seed)
                      for seed in range(args.seeds)]
            print(f"{epochs} epochs, label smoothing {smoothing:g}: "
                  f"{' '.join(f'{a:.3f}' for a in scores)} (mean {np.mean(scores):.3f})")


if __name__ == "__main__":
    main()
