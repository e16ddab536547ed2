"""The commands, one module each, and the `visiontune COMMAND` dispatcher (`main.py`).

`python -m visiontune.<command>` reaches them through two-line entry modules at the
package's top (`python -m visiontune.export` through `export/__main__.py`).
"""
