"""TensorFlow's start-up notices kept off the console of a machine without a GPU.

As TensorFlow loads and looks for devices, its C++ code writes straight to the process's
stderr, before any logging is configured: "Could not find cuda drivers", an `E0000 ...
failed call to cuInit` that a new user reads as a failure, and absl's note about its own
logging. `TF_CPP_MIN_LOG_LEVEL` does not reach these, so they are caught at the file
descriptor for that moment and every other line written meanwhile is passed on. A user
who asks for TensorFlow's info or warning lines (`TF_CPP_MIN_LOG_LEVEL=0` or `1`) sees
them all.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator

from krefinery.runtime.device import prefer_onednn, tensorflow_installed

# Substrings of the lines TensorFlow and XLA write while loading on a machine without a
# GPU, whatever TF_CPP_MIN_LOG_LEVEL says.
STARTUP_NOTICES = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "cudart_stub.cc",
    "failed call to cuInit",
    "oneDNN custom operations are on",  # Turned on by `device.prefer_onednn`, which says why.
)


@contextlib.contextmanager
def startup_notices_hidden(enabled: bool = True) -> Iterator[None]:
    """Within this block, lines written to stderr (fd 2, by Python or C++) that contain a
    STARTUP_NOTICES entry are dropped; the rest are written out, in order, at its end."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines(keepends=True):
                if not any(notice in line for notice in STARTUP_NOTICES):
                    sys.stderr.write(line)
            sys.stderr.flush()


def load_tensorflow() -> None:
    """Imports TensorFlow, if it is installed and not yet loaded, with oneDNN's kernels on
    (`device.prefer_onednn`), and lets it find its devices, with its start-up notices
    hidden (unless TF_CPP_MIN_LOG_LEVEL asks for its info or warning lines)."""
    if "tensorflow" in sys.modules or not tensorflow_installed():
        return
    prefer_onednn()
    with startup_notices_hidden(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") not in ("0", "1")):
        import tensorflow as tf

        tf.config.list_physical_devices()
