"""A trained model out: saving (with the LoRA merge), loading a run for serving,
SavedModel, TFLite and ONNX export, and the parity check.
"""
