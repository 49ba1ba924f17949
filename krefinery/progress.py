"""The progress of long work outside `fit` (reading a folder's images, a relabel pass),
shown as Keras's `verbose` levels show an epoch: 1, a live bar with the count and time
left (`keras.utils.Progbar`); 2, for a log file, a line every PROGRESS_INTERVAL seconds
once the work has run that long, and one at its end, so work that ends sooner adds no
line; 0, nothing. At ImageNet's million files such work takes minutes, which silence
would hide.
"""

from __future__ import annotations

import time

# Seconds between the lines of long work in a log file (where stdout is not a terminal).
PROGRESS_INTERVAL = 10.0


class Progress:
    """`add(n)` as work is done, in a `with` block (or `close()` at its end); `total`
    units in all."""

    def __init__(self, title: str, total: int, verbose: int, unit: str = "image"):
        self.title, self.total, self.verbose, self.unit = title, total, verbose, unit
        self.done = 0
        self._start = self._last = time.monotonic()
        self._printed = False  # A line so far: then one at the end too.
        self._bar = None
        if verbose == 1 and total:
            import keras  # Only for the bar: this module loads on every layer.

            print(f"{title}:", flush=True)
            self._bar = keras.utils.Progbar(total, verbose=1, unit_name=unit)

    def add(self, count: int = 1) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(self.done)
        elif self.verbose == 2:
            now = time.monotonic()
            if now - self._last >= PROGRESS_INTERVAL and self.done < self.total:
                self._last = now
                self._printed = True
                elapsed = now - self._start
                left = elapsed * (self.total - self.done) / max(self.done, 1)
                print(
                    f"{self.title}: {self.done:,}/{self.total:,} {self.unit}s, "
                    f"{elapsed:.0f} s so far, about {left:.0f} s left",
                    flush=True,
                )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._printed:
            elapsed = time.monotonic() - self._start
            print(f"{self.title}: {self.done:,}/{self.total:,} {self.unit}s in {elapsed:.0f} s", flush=True)
