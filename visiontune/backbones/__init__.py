"""ImageNet backbones: the registry, how their layers group into blocks,
EfficientNet-Lite, the safe weight reader, and where weights come from.
"""
