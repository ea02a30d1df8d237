"""The Behler–Parrinello neural-network potential shared by the ML-MD worker and the trainer.

    from slhmc.potential import load_calculator
    atoms.calc = load_calculator("runs/cu32")      # newest model of a run, or one model file
"""

from .calculator import BPNNCalculator, load_calculator
from .descriptors import DescriptorSpec
from .network import BPNN
from .serialization import load_model, model_from_bytes, model_to_bytes, save_model

__all__ = [
    "BPNN",
    "BPNNCalculator",
    "DescriptorSpec",
    "load_calculator",
    "load_model",
    "model_from_bytes",
    "model_to_bytes",
    "save_model",
]
