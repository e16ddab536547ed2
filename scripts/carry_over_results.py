"""Carries the suite's stored rows across a refactor, once fresh runs reproduce them exactly.

Any change to what visiontune's code does changes the suite's code digest, so
every stored row of the recipes it touches would run again: about 40 minutes for
the default's 18 rows, and hours for the keras.io recipe. When a change should
not alter any number (a refactor), run the cheap rows again into a separate file
at the new code. This script then checks that each fresh row has exactly the
stored row's accuracy at the old digest, and only if every one does, stores the
old rows under the new digest too: the rows named by `--from`, and those of the
methods in `--also` (which share the verified code path but were not rerun). Each
carried row keeps its original timing (measured without the verification run's
competition for the CPU) and says where it came from in `carried_over_from`.

    python scripts/transfer_suite.py --seeds 3 --no-keras-io --results /tmp/fresh.json
    python scripts/carry_over_results.py /tmp/fresh.json --from probe=341ab56dc0a26733 \\
        --from default=5c293c5065684abd --also keras.io=fb48fe20343e933d
"""

import argparse
import json
import sys

import transfer_suite as suite


def _pairs(items, flag):
    pairs = {}
    for item in items:
        method, sep, digest = item.partition("=")
        if not sep or not digest:
            raise SystemExit(f"carry_over_results: {flag} {item!r}: expected METHOD=DIGEST")
        pairs[method] = digest
    return pairs


def current_versions():
    """Each method's code digest now, as `transfer_suite.main` computes it."""
    baseline = suite.BASELINE_MODULES
    return {"probe": suite.code_version(*suite._PROBE_CODE, modules=baseline),
            "keras.io": suite.code_version(*suite._KERAS_IO_CODE, modules=baseline)}


def carry_over(stored, fresh, verified, also, versions):
    """Returns the rows to add to `stored` (a dict of key to row), or raises SystemExit.

    `verified` and `also` map a method to its old digest; `versions` maps the
    methods in `also` to their new digest (the verified methods take theirs
    from `fresh`).
    """
    checked, mismatches, new_version = 0, [], {}
    for key, row in fresh.items():
        dataset, method, settings, seed, version = json.loads(key)
        if method not in verified:
            continue
        old = stored.get(suite.Results.key(dataset, method, settings, seed, verified[method]))
        if old is None:
            mismatches.append(f"{dataset} {method} seed {seed}: no stored row at "
                              f"{verified[method]}")
        elif old["val_accuracy"] != row["val_accuracy"]:
            mismatches.append(f"{dataset} {method} seed {seed}: stored "
                              f"{old['val_accuracy']!r}, fresh {row['val_accuracy']!r}")
        checked += 1
        if new_version.setdefault(method, version) != version:
            raise SystemExit(f"carry_over_results: fresh {method} rows have two digests, "
                             f"{new_version[method]} and {version}; rerun into an empty file.")
    missing = sorted(set(verified) - set(new_version))
    if mismatches or missing:
        raise SystemExit("carry_over_results: not carried over. "
                         + "; ".join(mismatches + [f"no fresh {m} rows" for m in missing]))
    new_version |= {method: versions[method] for method in also}
    note = (f"verified: {checked} fresh rows of {', '.join(sorted(verified))} equal the "
            "stored ones")
    added = {}
    for key, row in stored.items():
        dataset, method, settings, seed, version = json.loads(key)
        old = {**verified, **also}.get(method)
        if version == old and version != new_version[method]:
            added[suite.Results.key(dataset, method, settings, seed, new_version[method])] = {
                **row, "carried_over_from": {"version": old, "why": note}}
    return added


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fresh", help="results file of the rerun at the new code")
    parser.add_argument("--from", dest="verified", action="append", default=[],
                        metavar="METHOD=DIGEST", help="a rerun method and its old digest")
    parser.add_argument("--also", action="append", default=[], metavar="METHOD=DIGEST",
                        help="a method carried over on the others' evidence")
    parser.add_argument("--results", default=suite.RESULTS)
    args = parser.parse_args(argv)
    verified, also = _pairs(args.verified, "--from"), _pairs(args.also, "--also")
    unknown = sorted(set(also) - set(current_versions()))
    if unknown:
        raise SystemExit(f"carry_over_results: --also {unknown}: only "
                         f"{sorted(current_versions())} can be carried over without a rerun")
    results = suite.Results(args.results)
    fresh = suite.Results(args.fresh)
    added = carry_over(results.rows, fresh.rows, verified, also, current_versions())
    for key, row in added.items():
        results.put(key, row)
    print(f"carried over {len(added)} rows", file=sys.stderr)


if __name__ == "__main__":
    main()
