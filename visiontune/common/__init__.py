"""Leaves that every layer may use and that import nothing else from visiontune: atomic
file writing, the uses of Keras internals, argument checks, the kind of a dataset's
labels, an attribute-forwarding proxy, the network probe, quiet start-up, the version.
"""
