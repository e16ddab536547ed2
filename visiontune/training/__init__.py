"""Training a classifier: the recipe, its phases, optimizers and schedules, the phased
history, caching, resume, `tf.distribute`, the LR finder, and method comparison.
"""
