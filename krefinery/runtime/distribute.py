"""Training on several devices: `--distribute` resolved once per run, and what it implies.

- `none`: one device, as Keras picks it.
- `mirrored` (TensorFlow): `tf.distribute.MirroredStrategy` over this machine's GPUs
  (or, with none, its logical CPUs): one replica per device, gradients summed across them.
- `multi_worker` (TensorFlow): `tf.distribute.MultiWorkerMirroredStrategy` over the
  machines that `TF_CONFIG` names; every worker runs the same command.
- `data_parallel` (JAX): `keras.distribution.DataParallel` over JAX's devices; the step
  is one SPMD program over the global batch.
- `auto`: `multi_worker` if `TF_CONFIG` is set, else several accelerators (GPUs, TPUs)
  give `mirrored` on TensorFlow and `data_parallel` on JAX; anything else is `none`.

`--batch_size` is the global batch: each replica gets `batch_size / replicas` examples,
and each epoch's last, smaller batch is cut to a multiple of the replica count
(`Replication.batch_multiple`). Under `mirrored` and `multi_worker` batch normalization
is synchronized across replicas (Keras's `synchronized=True`) and `Trainer.compute_loss`
returns each replica's share of the loss, so a step computes what one device computes
on the same batch, up to the order of float sums; under `data_parallel` that holds by
construction (measured in tests/test_distribute.py).

`multi_worker` is refused after `TF_CONFIG` is checked: Keras 3's `fit` fails under
MultiWorkerMirroredStrategy (see `_multi_worker`). So is any launch of several processes
(Keras's `KERAS_DISTRIBUTION_NUM_PROCESSES`, a `TF_CONFIG` of several tasks) that a run
would not join into one chain (see `_refuse_several_processes`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Callable, ContextManager, Iterator

import keras

from krefinery.config import DISTRIBUTES
from krefinery.core.relabel import INFERENCE_BATCH_SIZE
from krefinery.errors import UserError
from krefinery.runtime.hosts import ALONE, NUM_PROCESSES, Hosts

TF_CONFIG = "TF_CONFIG"


@dataclasses.dataclass(frozen=True)
class Replication:
    """What `--distribute` resolved to here: `name` (never `auto`), the number of
    `replicas` that share each global batch, and the strategy or distribution itself."""

    name: str
    replicas: int
    handle: Any = None  # A tf.distribute.Strategy or a keras.distribution.Distribution.
    hosts: Hosts = ALONE

    @property
    def batch_multiple(self) -> int:
        """What every training batch must be a multiple of (`pipeline.training_dataset`
        cuts each epoch's last batch to one): JAX cannot split a batch over its devices
        unevenly, and tf.distribute would hand a replica an empty share of a last
        batch smaller than the replica count."""
        return self.replicas

    @property
    def synchronized_batch_norm(self) -> bool:
        """Whether batch normalization must gather its statistics across replicas (it
        does by construction under JAX's SPMD step)."""
        return self.name in ("mirrored", "multi_worker") and self.replicas > 1

    def scope(self) -> ContextManager:
        """Where the trainer, its optimizer and anything they train must be built. (On
        JAX, `resolve` made the distribution Keras's global one: it must also be in
        force where they run, in `fit`, `evaluate` and `predict_on_batch`.)"""
        if self.name in ("mirrored", "multi_worker"):
            return self.handle.scope()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def here(self) -> Iterator[None]:
        """Where a model built is this process's alone: off JAX's distribution across
        processes, whose arrays compute only with every process taking part (process 0
        exports alone)."""
        if not self.hosts.several:
            yield
            return
        keras.distribution.set_distribution(None)
        try:
            yield
        finally:
            keras.distribution.set_distribution(self.handle)

    def check_batch_size(self, batch_size: int) -> None:
        if self.name == "data_parallel" and batch_size == INFERENCE_BATCH_SIZE:
            raise UserError(
                f"--batch_size={batch_size} under --distribute=data_parallel is also the "
                "evaluation batch, whose last part the devices may not share evenly: pass "
                f"--batch_size={batch_size - self.replicas} or {batch_size + self.replicas}."
            )
        if batch_size % self.replicas:
            lower = max(self.replicas, batch_size - batch_size % self.replicas)
            raise UserError(
                f"--batch_size={batch_size} is the global batch, which the {self.replicas} "
                f"replicas of --distribute={self.name} must share evenly: pass a multiple of "
                f"{self.replicas}, e.g. --batch_size={lower}."
            )

    def share(self, batch: Any) -> Any:
        """This process's rows of a training batch (a dict of tensors of any backend, or
        of a `tf.data` element): each process feeds its own consecutive share, and JAX
        joins the shares, in process order, into the global batch. The whole batch
        when this process trains alone."""
        hosts = self.hosts
        if not hosts.several:
            return batch

        def rows(tensor: Any) -> Any:
            if not getattr(tensor, "is_fully_addressable", True):
                # Made on the device from the replicated label table: this process's copy.
                tensor = tensor.addressable_data(0)
            count = tensor.shape[0]
            if count is None:  # A tf.data element, of a batch size known as it runs.
                import tensorflow as tf

                count = tf.shape(tensor)[0]
            size = count // hosts.count
            return tensor[hosts.index * size : (hosts.index + 1) * size]

        return {name: rows(tensor) for name, tensor in batch.items()}

    def shares(self, batches: Any) -> Any:
        """`batches` (a `tf.data.Dataset` or a `keras.utils.PyDataset` of dict batches)
        as this process feeds them: its `share` of each."""
        if not self.hosts.several:
            return batches
        if isinstance(batches, keras.utils.PyDataset):
            return _Shares(batches, self.share)
        return batches.map(self.share)

    def inference_batch(self, count: int) -> int:
        """The batch in which every process labels or evaluates a set of `count` examples
        whole. Across processes, JAX must be told which batches are training shares (split
        over the devices) and which are whole (replicated): `TrainingDataParallel` tells
        them by size, so no batch of such a set (nor its last) is a share's size."""
        if not self.hosts.several:
            return INFERENCE_BATCH_SIZE
        share = self.handle.share_rows
        for size in range(INFERENCE_BATCH_SIZE, 0, -1):
            batches = {size} if count >= size else set()
            if count % size:
                batches.add(count % size)
            if share not in batches:
                return size
        raise UserError(f"--batch_size={self.handle.batch_size} leaves no evaluation batch for {count} examples.")

    def evaluation_batch(self, count: int) -> int:
        """The batch size in which to `evaluate` a set of `count` examples.

        Under tf.distribute, Keras reads an `evaluate`'s first batch to build the model
        and averages it over the replicas, which fails unless they share it evenly; and
        a last batch smaller than the replica count leaves a replica an empty share,
        which fails too. Later batches may be uneven otherwise. So the batch is a
        multiple of the replica count that leaves no such remainder, where the set is
        large enough (2 replica counts) to allow one. Elsewhere: INFERENCE_BATCH_SIZE.
        """
        if self.name not in ("mirrored", "multi_worker") or self.replicas == 1:
            return self.inference_batch(count)
        size = min(INFERENCE_BATCH_SIZE, count)
        size -= size % self.replicas
        while size > self.replicas and 0 < count % size < self.replicas:
            size -= self.replicas
        return max(size, 1)

    def runtime(self) -> dict[str, Any]:
        """Its part of `results.json`'s "runtime" (and so of every chain key)."""
        several = {"processes": self.hosts.count} if self.hosts.several else {}
        return {"distribute": self.name, "replicas": self.replicas, **several}


ONE_DEVICE = Replication("none", 1)


class _Shares(keras.utils.PyDataset):
    """A `PyDataset`'s batches, each cut to this process's share."""

    def __init__(self, batches: keras.utils.PyDataset, share: Callable[[Any], Any]):
        super().__init__()
        self._batches, self._share = batches, share

    @property
    def num_batches(self) -> int | None:
        return self._batches.num_batches

    def __getitem__(self, index: int) -> Any:
        return self._share(self._batches[index])


def resolve(requested: str, batch_size: int, hosts: Hosts = ALONE) -> Replication:
    """`--distribute` -> the strategy or distribution this run trains under.

    Call it once, before TensorFlow runs anything (MultiWorkerMirroredStrategy must be
    made first). A choice this backend or machine cannot honour is a `UserError`.
    `hosts`: the processes `hosts.join` joined; several train one chain under
    `data_parallel` over all their devices.
    """
    if requested not in DISTRIBUTES:
        raise UserError(f"--distribute={requested} must be one of {', '.join(DISTRIBUTES)}.")
    backend = keras.backend.backend()
    tf_config = os.environ.get(TF_CONFIG)
    if hosts.several:
        check_several(requested, backend)
        requested = "data_parallel"
    elif requested == "auto":
        requested = _auto(backend, tf_config)
    if not hosts.several:
        _refuse_several_processes(requested, tf_config)
    if backend == "jax":
        keras.distribution.set_distribution(None)  # Until data_parallel sets one, below.
    if requested == "none":
        return ONE_DEVICE
    if requested in ("mirrored", "multi_worker") and backend != "tensorflow":
        alternative = "JAX's --distribute=data_parallel" if backend == "jax" else "--distribute=none"
        raise UserError(
            f"--distribute={requested} is TensorFlow's tf.distribute, but KERAS_BACKEND={backend}: "
            f"use KERAS_BACKEND=tensorflow, or {alternative}."
        )
    if requested == "data_parallel" and backend != "jax":
        alternative = "--distribute=mirrored" if backend == "tensorflow" else "--distribute=none"
        raise UserError(
            f"--distribute=data_parallel is keras.distribution.DataParallel, which runs on "
            f"KERAS_BACKEND=jax only (here: {backend}); use {alternative}."
        )
    if requested == "multi_worker":
        return _multi_worker(tf_config)
    if requested == "mirrored":
        import tensorflow as tf

        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
        return Replication("mirrored", strategy.num_replicas_in_sync, strategy)
    import jax

    devices = jax.devices()  # Every process's.
    distribution = TrainingDataParallel(batch_size, devices=devices, hosts=hosts)
    keras.distribution.set_distribution(distribution)
    return Replication("data_parallel", len(devices), distribution, hosts)


def check_several(requested: str, backend: str) -> None:
    """Several processes train one chain on JAX alone, under `data_parallel` (or `auto`)."""
    if backend != "jax":
        raise UserError(
            f"{NUM_PROCESSES} asks for one run across several processes, which trains on "
            f"KERAS_BACKEND=jax (here: {backend}); TensorFlow's MultiWorkerMirroredStrategy "
            "fails in Keras 3's fit (keras-team/keras#20329)."
        )
    if requested not in ("auto", "data_parallel"):
        raise UserError(
            f"--distribute={requested} trains in one process, but {NUM_PROCESSES} asks for "
            "several: pass --distribute=data_parallel (or auto) to train one chain across them."
        )


class TrainingDataParallel(keras.distribution.DataParallel):
    """`DataParallel` that splits training batches over the devices and hands every
    device evaluation batches whole.

    Keras fixes the layout of a `fit`, `evaluate` or `predict` from its first batch,
    and JAX cannot split a batch unevenly. Training batches are made to fit (every
    one a multiple of the device count, `Replication.batch_multiple`); evaluation
    sets end in a remainder of any size, so their batches (of
    `pipeline.INFERENCE_BATCH_SIZE`, never the training batch) are replicated: each
    device evaluates them whole, which gives the same numbers as one device.
    """

    def __init__(self, batch_size: int, devices, hosts: Hosts = ALONE):
        super().__init__(devices=devices)
        # Each process feeds its share of every training batch (`Replication.share`),
        # and every evaluation batch whole.
        self.auto_shard_dataset = False
        self.batch_size = batch_size
        self.share_rows = batch_size // hosts.count

    def get_data_layout(self, data_shape):
        if data_shape and data_shape[0] == self.share_rows:
            return super().get_data_layout(data_shape)
        return keras.distribution.TensorLayout([None] * len(data_shape), self.device_mesh)


def _refuse_several_processes(requested: str, tf_config: str | None) -> None:
    """A launch of several processes that were not joined into one run (`hosts.join`,
    which `run.py` calls) is refused before anything is read: each would train a chain of
    its own into the same work directory and export folder, and exit 0 (issue 19 saw it:
    two versions in one export folder). So is a `TF_CONFIG` of several tasks under
    anything but `multi_worker` (`_multi_worker`'s). `requested` is resolved (not `auto`)."""
    processes = os.environ.get(NUM_PROCESSES, "").strip()
    if processes not in ("", "1"):
        raise UserError(
            f"{NUM_PROCESSES}={processes} asks for one run across several processes, but this "
            "process has not joined them: call krefinery.runtime.hosts.join() first and pass "
            "its Hosts on, as run.py does."
        )
    if requested == "multi_worker" or not tf_config:
        return
    try:
        tasks = sum(len(hosts) for hosts in json.loads(tf_config)["cluster"].values())
    except (ValueError, KeyError, TypeError, AttributeError):
        return  # Not a cluster: nothing here asks for several processes.
    if tasks > 1:
        raise UserError(
            f"TF_CONFIG names {tasks} tasks, but --distribute={requested} trains on this "
            "machine alone: each task would train a chain of its own into the same work "
            "directory. Unset TF_CONFIG to run here alone."
        )


def _auto(backend: str, tf_config: str | None) -> str:
    if tf_config and backend == "tensorflow":
        return "multi_worker"
    if backend == "tensorflow":
        import tensorflow as tf

        return "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "none"
    if backend == "jax":
        import jax

        accelerators = [d for d in jax.devices() if d.platform != "cpu"]
        return "data_parallel" if len(accelerators) > 1 else "none"
    return "none"


_TF_CONFIG_FORM = (
    'it names every worker and this one\'s task, e.g. TF_CONFIG=\'{"cluster": {"worker": '
    '["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\'.'
)


def cluster(tf_config: str | None = None) -> dict[str, Any]:
    """`TF_CONFIG` read and checked: `{"cluster": {...}, "task": {"type", "index"}}`."""
    text = os.environ.get(TF_CONFIG) if tf_config is None else tf_config
    if not text:
        raise UserError(
            "--distribute=multi_worker needs TF_CONFIG, the JSON that names every worker and "
            'this one\'s task, e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", '
            '"host2:12345"]}, "task": {"type": "worker", "index": 0}}\'.'
        )
    try:
        parsed = json.loads(text)
    except ValueError as error:
        raise UserError(f"TF_CONFIG is not JSON ({error}); {_TF_CONFIG_FORM}") from None
    cluster = parsed.get("cluster") if isinstance(parsed, dict) else None
    task = parsed.get("task") if isinstance(parsed, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise UserError(f"TF_CONFIG needs a \"cluster\" and a \"task\" object; {_TF_CONFIG_FORM}")
    task_type, index = task.get("type"), task.get("index")
    hosts = cluster.get(task_type)
    if not isinstance(hosts, list):
        raise UserError(
            f"TF_CONFIG's task type {task_type!r} is not one of its cluster's "
            f"({', '.join(map(repr, cluster)) or 'none'}); {_TF_CONFIG_FORM}"
        )
    with contextlib.suppress(TypeError, ValueError):
        index = int(index)  # As TensorFlow reads it.
    if not isinstance(index, int) or not 0 <= index < len(hosts):
        raise UserError(
            f"TF_CONFIG's task index {index!r} is not one of its {len(hosts)} {task_type!r} "
            f"host(s) (0 to {len(hosts) - 1}); {_TF_CONFIG_FORM}"
        )
    return parsed


def _multi_worker(tf_config: str | None) -> Replication:
    """Refused for now, after `TF_CONFIG` is checked: Keras 3's `fit` fails under
    MultiWorkerMirroredStrategy before the first step: it averages the first batch
    across workers to build the model, and the strategy's reduce takes no nested
    values, so a dict batch like ours fails, and so does a plain `(x, y)` tuple
    (keras-team/keras#20329, open). Seen here with Keras 3.15.1, TensorFlow 2.21 and
    two workers on localhost."""
    cluster(tf_config)
    raise UserError(
        "--distribute=multi_worker does not train with Keras 3 yet: its fit fails under "
        "MultiWorkerMirroredStrategy (keras-team/keras#20329). Train on one "
        "machine's devices with --distribute=mirrored."
    )
