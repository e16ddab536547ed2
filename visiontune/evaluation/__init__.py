"""Scoring a model: metrics, plots, and WiSE-FT weight interpolation.
"""
