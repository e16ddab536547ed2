"""`python -m visiontune.doctor --data DIR`: what is wrong with an image folder, before training.

It reports class counts and imbalance, files that cannot be decoded, grayscale,
alpha and CMYK images, image sizes, and exact duplicates by content, above all
across training and validation, where they inflate validation accuracy
(`data.doctor` finds them).
"""

import argparse
import json
import os
import sys

from visiontune.common import quiet_start
from visiontune.data import doctor


def main(argv=None):
    """Entry point of `python -m visiontune.doctor`."""
    parser = argparse.ArgumentParser(prog="python -m visiontune.doctor",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of class subfolders, or with "
                        "train/ and val/ subfolders")
    parser.add_argument("--val-data", help="separate validation folder")
    parser.add_argument("--json", help="also write the report to this JSON file")
    quiet_start.add_flag(parser)
    args = parser.parse_args(argv)
    try:
        report = doctor.diagnose(args.data, args.val_data, verbose=True)
    except (ValueError, OSError) as error:
        print(f"visiontune.doctor: error: {error}", file=sys.stderr)
        return 2
    print(doctor.format_report(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        print(f"Report written to {os.path.abspath(args.json)}")
    return 0
