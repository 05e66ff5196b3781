"""The seams of the daemon: what it needs from an audio source, a model runtime, a detection
sink, and what a controller (updater, signal handler, tests) may ask of a running daemon.

They are structural (``typing.Protocol``): any object with these members fits, so a new
source (a network stream), runtime (TFLite) or sink (a webhook) is one new class handed to
:class:`edge.service.daemon.Daemon`, and tests pass real alternatives instead of patching.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from edge.audio.base import AudioBlock
    from edge.models.bundle import ModelBundle


@runtime_checkable
class AudioSource(Protocol):
    """Blocks of mono float32 audio; ``read`` never blocks longer than ``timeout``."""

    sample_rate: int

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def read(self, timeout: float) -> AudioBlock | None: ...
    @property
    def finished(self) -> bool: ...
    def stats(self) -> dict[str, Any]: ...


@runtime_checkable
class ModelRuntime(Protocol):
    """A loaded model: spectrogram images in, per-label probabilities out."""

    bundle: ModelBundle

    @property
    def labels(self) -> list[str]: ...
    def predict(self, images: np.ndarray) -> np.ndarray: ...
    def self_test(self) -> np.ndarray: ...
    def latency_ms(self) -> dict[str, float | None]: ...


@runtime_checkable
class DetectionSink(Protocol):
    """Where detection messages go (MQTT outbox, JSON lines, a webhook). ``payload`` is the
    versioned wire message of :mod:`edge.mqtt.payloads`; a sink must not block the audio loop
    for long and must not raise for transient trouble (it counts and logs instead)."""

    def send_detection(self, payload: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


@runtime_checkable
class DaemonControl(Protocol):
    """What the updater and the signal handlers may ask of a running daemon."""

    def request_stop(self) -> None: ...
    def request_model_swap(self, bundle: ModelBundle) -> None: ...
    def reload_model(self) -> None: ...
    def status(self) -> dict[str, Any]: ...
