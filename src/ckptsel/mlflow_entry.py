"""Models-from-code entry point of the registered pyfunc (no pickled Python object)."""

import mlflow.models

from ckptsel.mlflow_model import PairwisePyfunc

mlflow.models.set_model(PairwisePyfunc())
