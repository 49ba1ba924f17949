"""Small in-memory sources with known content, for pipeline and refinery tests."""

from __future__ import annotations

import contextlib
import json
import urllib.request

import keras
import numpy as np
import tensorflow as tf

from krefinery.core.resnet import build_resnet
from krefinery.data.sources import Source


def constant_images(num: int = 60, classes: int = 4, shape=(16, 16, 1)) -> Source:
    """Example i is an image filled with the value 4i+3 (distinct, non-zero); label i % classes."""
    values = np.arange(num) * 4 + 3
    images = np.broadcast_to(values[:, None, None, None], (num, *shape)).astype(np.uint8)
    labels = np.arange(num) % classes
    data = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    return Source("constant", data, None, tuple(map(str, range(classes))), shape)


def random_images(num: int = 96, classes: int = 4, shape=(8, 8, 1), seed: int = 0) -> Source:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, num)
    images = (rng.integers(0, 60, (num, *shape)) + 50 * labels[:, None, None, None]).astype(np.uint8)
    data = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    test = tf.data.Dataset.from_tensor_slices({"image": images[:16], "label": labels[:16]})
    return Source("random", data, test, tuple(map(str, range(classes))), shape)


class KnownFunction(keras.Model):
    """Logits that are a fixed function of an image's brightest pixel.

    Translation and flips keep the brightest pixel of a constant image, so the right
    refined label of an augmented image is known from its pixels alone.
    """

    def __init__(self, classes: int = 4):
        super().__init__()
        self.frequencies = tf.range(1, classes + 1, dtype=tf.float32)

    def call(self, images, training=False):
        brightest = tf.reduce_max(tf.cast(images, tf.float32), axis=[1, 2, 3])
        return 4.0 * tf.sin(brightest[:, None] * self.frequencies / 17.0)


def classifier_builder(shape, classes, precision="float32", depth=8):
    def build(seed: int) -> keras.Model:
        keras.utils.set_random_seed(seed)
        return build_resnet(shape, classes, depth=depth, precision=precision)

    return build


def every_generation(build):
    """`LabelRefinery`'s `build_classifier(generation, seed)` from a `build(seed)`: one
    architecture for every generation."""
    return lambda generation, seed: build(seed)


@contextlib.contextmanager
def tensorboard_server(logdir):
    """TensorBoard's own server on a free port of 127.0.0.1, its data loaded once before it
    answers; stopped on leaving."""
    from tensorboard import program

    servers = []

    def make_server(app, flags):
        servers.append(program.WerkzeugServer(app, flags))
        return servers[-1]

    board = program.TensorBoard(server_class=make_server)
    board.configure(
        logdir=str(logdir), host="127.0.0.1", port=0, load_fast="false",
        reload_interval=0, reload_task="blocking",
    )
    url = board.launch()
    try:
        yield url.rstrip("/")
    finally:
        servers[0].shutdown()
        servers[0].server_close()


def get_json(url: str, body: dict | None = None):
    """GET, or POST `body` as JSON (as the HParams dashboard does), with a bounded wait."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.loads(response.read())
