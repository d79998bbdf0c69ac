"""Save the benchmark's Keras model in MLflow's format; run with the Python of a venv that has mlflow.

usage: python mlflow_model.py MODEL.keras OUTPUT_DIR
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import mlflow
import numpy as np
from mlflow.models import infer_signature


def main(model_file: str, output: str) -> None:
    model = keras.saving.load_model(model_file)
    example = np.zeros((1, model.input_shape[-1]), dtype=np.float32)
    signature = infer_signature(example, model.predict(example, verbose=0))
    mlflow.tensorflow.save_model(model, output, signature=signature)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
