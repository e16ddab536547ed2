"""`python -m visiontune.doctor --data DIR`: what is wrong with an image folder, before training.

It reports class counts and imbalance, files that cannot be decoded, grayscale,
alpha and CMYK images, image sizes, and exact duplicates by content, above all
across training and validation, where they inflate validation accuracy
(`data.doctor` finds them).

With `--label-issues` it also ranks the images whose given label looks wrong
(`evaluation.label_issues`: confident learning on out-of-fold logistic
regression over a frozen backbone's features) and writes `label_issues.csv`
and a contact sheet, `label_issues.png`, to `--output`.
"""

import argparse
import json
import os
import sys

from visiontune.backbones import registry
from visiontune.common import quiet_start
from visiontune.data import doctor
from visiontune.evaluation import label_issues


def main(argv=None):
    """Entry point of `python -m visiontune.doctor`."""
    parser = argparse.ArgumentParser(prog="python -m visiontune.doctor",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of class subfolders, or with "
                        "train/ and val/ subfolders")
    parser.add_argument("--val-data", help="separate validation folder")
    parser.add_argument("--json", help="also write the report to this JSON file")
    issues = parser.add_argument_group(
        "label issues", "rank the images whose label a frozen backbone's features doubt")
    issues.add_argument("--label-issues", action="store_true",
                        help="find suspected label issues (every split is examined)")
    issues.add_argument("--backbone", default="efficientnet_lite0",
                        choices=registry.list_backbones(), metavar="NAME",
                        help="backbone whose pretrained features judge the labels "
                             "(default: %(default)s)")
    issues.add_argument("--weights", default="imagenet",
                        help="'imagenet' or a weights file (default: %(default)s)")
    issues.add_argument("--image-size", type=int, help="input side (default: the backbone's)")
    issues.add_argument("--output", default="label_issues",
                        help="folder for label_issues.csv and label_issues.png "
                             "(default: %(default)s)")
    issues.add_argument("--overwrite", action="store_true",
                        help="replace label_issues.csv and .png in --output if they exist")
    issues.add_argument("--show", type=int, default=20, metavar="N",
                        help="suspects listed and shown on the contact sheet (default: 20)")
    issues.add_argument("--seed", type=int, default=0, help="seed of the folds")
    quiet_start.add_flag(parser)
    args = parser.parse_args(argv)
    outputs = [os.path.join(args.output, f"label_issues.{ext}") for ext in ("csv", "png")]
    existing = [path for path in outputs if os.path.exists(path)]
    if args.label_issues and existing and not args.overwrite:
        print(f"visiontune.doctor: error: --output: {existing[0]} exists. Pass --overwrite to "
              "replace it, or choose another --output.", file=sys.stderr)
        return 2
    try:
        report = doctor.diagnose(args.data, args.val_data, verbose=True)
    except (ValueError, OSError) as error:
        print(f"visiontune.doctor: error: {error}", file=sys.stderr)
        return 2
    print(doctor.format_report(report))
    if args.label_issues:
        try:
            found = label_issues.find_label_issues(
                args.data, args.backbone, args.weights, args.image_size, seed=args.seed,
                val_data=args.val_data)
        except (ValueError, OSError) as error:
            print(f"visiontune.doctor: error: --label-issues: {error}", file=sys.stderr)
            return 2
        os.makedirs(args.output, exist_ok=True)
        found.write_csv(outputs[0])
        label_issues.contact_sheet(found, outputs[1], count=args.show)
        print(_format_label_issues(found, args.show, outputs))
        report["suspected_label_issues"] = found.summary()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        print(f"Report written to {os.path.abspath(args.json)}")
    return 0


def _format_label_issues(found, show, outputs):
    per_split = ", ".join(f"{n} in {split}" for split, n in found.summary()["per_split"].items())
    lines = [f"Suspected label issues: {found.count} of {len(found.labels)} images "
             f"({per_split}). {label_issues.REVIEW_NOTE}"]
    for row in found.rows()[:show]:
        lines.append(f"  #{row['rank']:<4} {row['path']}: given {row['given_label']} "
                     f"({row['given_label_probability']:.2f}), features suggest "
                     f"{row['suggested_label']} ({row['suggested_label_probability']:.2f})")
    lines.append(f"All of them: {os.path.abspath(outputs[0])}; the first {show} as pictures: "
                 f"{os.path.abspath(outputs[1])}")
    return "\n".join(lines)
