"""ckptsel: predict which LLM pretraining checkpoint fine-tunes better.

Importing the package is cheap on purpose: heavy libraries (lightgbm, mlflow,
torch, transformers, peft) are imported inside the stage that needs them.
"""

__version__ = "0.1.0"

from ckptsel.errors import CkptselError

__all__ = ["CkptselError", "__version__"]
