"""The MLflow pyfunc wrapper of an exported predictor (``models/<name>/``).

The booster, the feature schema and the pair-feature recipe travel together as one
artifact directory; the pyfunc reads request rows with columns ``a.<feature>`` and
``b.<feature>`` and returns ``prob_a_better``. Bad requests raise an MlflowException with
INVALID_PARAMETER_VALUE, which the scoring server turns into HTTP 400, never 500.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd


class PairwisePyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from ckptsel.predictor import PairwisePredictor

        self.predictor = PairwisePredictor.load(context.artifacts["predictor"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

        from ckptsel.errors import CkptselError
        from ckptsel.payload import frames_from_columns

        try:
            if not isinstance(model_input, pd.DataFrame):
                model_input = pd.DataFrame(model_input)
            columns = {c: _column(model_input[c]) for c in model_input.columns}
            a, b = frames_from_columns(columns, self.predictor.schema_)
            prob = self.predictor.predict_proba(a, b)
        except (CkptselError, ValueError, TypeError, KeyError) as e:
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from e
        return pd.DataFrame({"prob_a_better": prob})


def _column(series: pd.Series):
    """A float column as its array (NaN = missing, checked vectorised); others as a list, None for missing."""
    if series.dtype.kind == "f":
        return series.to_numpy()
    return [None if _is_missing(v) else v for v in series.tolist()]


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)
