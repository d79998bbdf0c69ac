"""Example Keras model in the original MLaaS4HEP style: ``model(idim)`` returns a compiled model.

This is the original's open-data classifier (about 239k parameters for its 1803 input features).
Train it with ``mlaas4hep train --model examples/model.py ...``.
"""

import keras


def model(idim):
    """A fully connected binary classifier taking ``idim`` normalised features."""
    ml_model = keras.Sequential(
        [
            keras.Input(shape=(idim,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    ml_model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
    return ml_model
