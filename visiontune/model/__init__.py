"""The classifier: raw image -> preprocessing -> backbone -> new head.
"""
