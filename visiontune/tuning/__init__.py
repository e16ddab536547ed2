"""What trains: freezing the backbone, unfreezing its top blocks, bn-bias, LoRA adapters.
"""
