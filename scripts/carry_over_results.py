"""Carries the suite's stored rows across a refactor, once fresh runs reproduce them exactly.

Any change to what visiontune's code does changes the suite's code digest, so
every stored row of the recipes it touches would run again: about 40 minutes for
the default's 18 rows, and hours for the keras.io recipe. When a change should
not alter any number (a refactor), run some of the cheap rows again into a
separate file at the new code. This script then checks that each fresh row is at
today's digest and equals its stored row at the old digest in everything but
its timings, and only if every one does, stores the old rows under today's
digest too: all rows of the methods named by `--from`, and those of the methods
in `--also`, which were not rerun. Each carried row keeps its original timing
and says in `carried_over_from` where it came from, whether it was itself
rerun, and on how many reruns it relies.

It cannot tell whether the refactor really left the un-rerun rows alone: that
is the judgement of whoever runs it, and `--also` in particular is only for a
method whose own code did not change (the keras.io recipe's `run_keras_io`). Rows
that depend on floating-point details (the probe's C, chosen on a flat
cross-validation curve) may not reproduce on another machine at all; rerun
those instead.

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
            "keras.io": suite.code_version(*suite._KERAS_IO_CODE, modules=baseline),
            "default": suite.code_version()}


# What a row measured, apart from how long it took.
_TIMINGS = ("seconds", "train_seconds", "carried_over_from")


def _outcome(row):
    return {k: v for k, v in row.items() if k not in _TIMINGS}


def carry_over(stored, fresh, verified, also, versions):
    """Returns the rows to add to `stored` (a dict of key to row), or raises SystemExit.

    `verified` and `also` map a method to its old digest, and `versions` every
    method to its digest now. Every fresh row of a verified method must be at
    today's digest and equal its stored row in everything but the timings.
    Then every stored row of those methods at the old digest is carried to
    today's; each says whether it was itself rerun, and on how many reruns the
    rest rely.
    """
    mismatches, rerun = [], set()
    for key, row in fresh.items():
        dataset, method, settings, seed, version = json.loads(key)
        if method not in verified:
            continue
        if version != versions[method]:
            raise SystemExit(f"carry_over_results: the fresh {method} rows are at digest "
                             f"{version}, the code now at {versions[method]}; rerun them at "
                             "this code into an empty file.")
        old_key = suite.Results.key(dataset, method, settings, seed, verified[method])
        old = stored.get(old_key)
        if old is None:
            mismatches.append(f"{dataset} {method} seed {seed}: no stored row at "
                              f"{verified[method]}")
        elif _outcome(old) != _outcome(row):
            mismatches.append(f"{dataset} {method} seed {seed}: stored {_outcome(old)}, "
                              f"fresh {_outcome(row)}")
        rerun.add(old_key)
    missing = sorted(m for m in verified
                     if not any(json.loads(k)[1] == m for k in fresh))
    if mismatches or missing:
        raise SystemExit("carry_over_results: not carried over. "
                         + "; ".join(mismatches + [f"no fresh {m} rows" for m in missing]))
    evidence = (f"{len(rerun)} rows of {', '.join(sorted(verified))} were rerun at the new "
                "code and equal the stored ones except in their timings")
    added = {}
    for key, row in stored.items():
        dataset, method, settings, seed, version = json.loads(key)
        old = {**verified, **also}.get(method)
        if version == old and version != versions[method]:
            added[suite.Results.key(dataset, method, settings, seed, versions[method])] = {
                **row, "carried_over_from": {"version": old, "rerun": key in rerun,
                                             "evidence": evidence}}
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
    unknown = sorted((set(verified) | set(also)) - set(current_versions()))
    if unknown:
        raise SystemExit(f"carry_over_results: {unknown}: expected methods among "
                         f"{sorted(current_versions())}")
    results = suite.Results(args.results)
    fresh = suite.Results(args.fresh)
    added = carry_over(results.rows, fresh.rows, verified, also, current_versions())
    for key, row in added.items():
        results.put(key, row)
    print(f"carried over {len(added)} rows", file=sys.stderr)


if __name__ == "__main__":
    main()
