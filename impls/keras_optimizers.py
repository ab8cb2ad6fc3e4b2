"""Keras 3's native optimisers and clipping for a TrainConfig: shared by every backend that
runs the Keras model (tensorflow, tensorflow-xla on the TensorFlow engine; keras-jax and
keras-torch on theirs). It imports only Keras, so it loads whatever engine Keras picked."""
from __future__ import annotations

import keras

from .config import TrainConfig


def make_optimizer(train: TrainConfig) -> keras.optimizers.Optimizer:
    """The framework's own optimiser; where its formula differs from docs/SPEC.md §4 the
    registry's deviations say how (KERAS_DEVIATIONS)."""
    o, c = train.optimizer, train.clip
    clip: dict[str, float] = ({"global_clipnorm": c.value} if c.kind == "norm" else
                              {"clipvalue": c.value} if c.kind == "value" else {})
    if o.name == "sgd":
        return keras.optimizers.SGD(learning_rate=o.lr, **clip)
    if o.name == "adam":
        return keras.optimizers.Adam(learning_rate=o.lr, beta_1=o.beta1, beta_2=o.beta2,
                                     epsilon=o.eps, **clip)
    if o.name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=o.lr, rho=o.alpha, epsilon=o.eps, **clip)
    if o.name == "adagrad":  # docs/SPEC.md §4: s starts at 0 (Keras' default is 0.1)
        return keras.optimizers.Adagrad(learning_rate=o.lr, initial_accumulator_value=0.0,
                                        epsilon=o.eps, **clip)
    raise ValueError(f"unknown optimizer {o.name!r}")
