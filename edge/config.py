"""The daemon's configuration: one TOML file, one dataclass per section.

Unknown keys, wrong types and impossible values are rejected with the key's dotted name
and the reason (``SonotrapError``), so a typo in ``/etc/sonotrap/config.toml`` is caught by
``sonotrap check`` before the recorder goes to the forest. CLI flags override file values
via :func:`apply_overrides` (``section.key=value``).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.bounds import at_least, bad, check_bounds, choice, positive, warn_about_secrets
from edge.errors import SonotrapError
from edge.tomlconfig import from_dict, set_value

DEFAULT_CONFIG_PATH = Path("/etc/sonotrap/config.toml")


def default_state_dir() -> str:
    """Where ``state_dir`` points when no config sets it: a per-user folder.

    Replaying a file or analysing recordings must work for any user without a system
    directory, so the default is ``$XDG_STATE_HOME/sonotrap`` (``~/.local/state/sonotrap``),
    or ``<tmp>/sonotrap-<uid>`` for an account without a home. A device install
    (``sonotrap install-service``) writes ``state_dir = "/var/lib/sonotrap"`` into its config.
    """
    xdg = os.environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):
        return str(Path(xdg) / "sonotrap")
    home = os.environ.get("HOME") or os.path.expanduser("~")
    if os.path.isabs(home) and os.path.isdir(home) and os.access(home, os.W_OK):
        return str(Path(home) / ".local" / "state" / "sonotrap")
    return str(Path(tempfile.gettempdir()) / f"sonotrap-{os.getuid()}")


@dataclass
class AudioConfig:
    """Where audio comes from. ``source``: ``mic``, ``file`` or ``stdin``."""

    source: str = "mic"
    device: str | int | None = None  # sounddevice name substring or index; None = default
    sample_rate: int | None = None  # capture rate; None = the model's rate (resampled if needed)
    channels: int = 1  # channels to open on the device
    channel: int = 0  # which opened channel to analyse
    block_s: float = 0.1  # audio callback block length
    file: str | None = None  # recording for source = "file"
    realtime: bool = True  # file source: replay at real-time pace
    loop: bool = False  # file source: loop forever
    stdin_rate: int = 32000  # raw PCM on stdin: sample rate
    stdin_format: str = "s16le"  # raw PCM on stdin: s16le | f32le
    stdin_channels: int = 1
    stdin_backpressure: bool = False  # stdin: a full queue pauses reading (decoders) instead of dropping (live)
    queue_s: float = 10.0  # bounded queue between the callback and the pipeline
    silence_timeout_s: float = 60.0  # dead-input watchdog (0 disables)
    retry_initial_s: float = 1.0  # device missing: first retry delay
    retry_max_s: float = 60.0  # device missing: longest retry delay
    device_timeout_s: float = 0.0  # device missing this long -> error and exit (0 = retry forever)

    def validate(self) -> None:
        choice("audio.source", self.source, ("mic", "file", "stdin"))
        choice("audio.stdin_format", self.stdin_format, ("s16le", "f32le"))
        positive("audio.block_s", self.block_s)
        positive("audio.queue_s", self.queue_s)
        at_least("audio.channels", self.channels, 1)
        at_least("audio.channel", self.channel, 0)
        if self.source == "mic" and self.channel >= self.channels:
            bad("audio.channel", f"{self.channel} must be in 0..channels-1 ({self.channels - 1})")
        if self.source == "stdin" and self.channel >= self.stdin_channels:
            bad("audio.channel", f"{self.channel} must be in 0..stdin_channels-1 ({self.stdin_channels - 1})")
        if self.sample_rate is not None:
            at_least("audio.sample_rate", self.sample_rate, 1000)
        at_least("audio.stdin_rate", self.stdin_rate, 1000)
        at_least("audio.stdin_channels", self.stdin_channels, 1)
        at_least("audio.silence_timeout_s", self.silence_timeout_s, 0)
        at_least("audio.device_timeout_s", self.device_timeout_s, 0)
        if self.source == "file" and not self.file:
            bad("audio.file", "is required when audio.source = 'file'")
        if self.retry_initial_s <= 0 or self.retry_max_s < self.retry_initial_s:
            bad("audio.retry_initial_s", "needs 0 < retry_initial_s <= retry_max_s")


@dataclass
class ModelConfig:
    """Which bundle to run and how hard to push the CPU."""

    bundle: str | None = None  # path to a bundle dir / .tar.gz; None = the shipped demo model
    threads: int = 1  # onnxruntime intra-op threads
    hop_s: float = 0.5  # classify the newest 2-s window every hop
    max_batch: int = 8  # catch-up batch size when inference falls behind

    def validate(self) -> None:
        at_least("model.threads", self.threads, 1)
        positive("model.hop_s", self.hop_s)
        at_least("model.max_batch", self.max_batch, 1)


@dataclass
class DetectorConfig:
    """Scores -> events."""

    thresholds: dict[str, float] = field(default_factory=dict)  # per-label override
    default_threshold: float | None = None  # overrides the bundle's thresholds for all labels
    include: list[str] = field(default_factory=list)  # only these labels (empty = all)
    exclude: list[str] = field(default_factory=list)
    max_gap_hops: int = 0  # hops below threshold tolerated inside one event
    min_hops: int = 1  # events shorter than this are dropped
    min_report_interval_s: float = 0.0  # per-label minimum time between published events
    publish_started: bool = False  # also publish a "started" message at the first hit
    max_event_s: float = 10.0  # continuous calling is reported in events of at most this length (0 = no limit)
    # Labels the bundle ships disabled (precision not reachable on validation) are published
    # only when named here, or with "all".
    enable_labels: list[str] | str = field(default_factory=list)

    def validate(self) -> None:
        if isinstance(self.enable_labels, str) and self.enable_labels != "all":
            bad("detector.enable_labels", f"{self.enable_labels!r} must be a list of label codes or \"all\"")
        for label, value in self.thresholds.items():
            if not 0.0 <= value <= 1.0:
                bad(f"detector.thresholds.{label}", f"{value} must be within 0..1")
        if self.default_threshold is not None and not 0 <= self.default_threshold <= 1:
            bad("detector.default_threshold", f"{self.default_threshold} must be within 0..1")
        at_least("detector.max_gap_hops", self.max_gap_hops, 0)
        at_least("detector.min_hops", self.min_hops, 1)
        at_least("detector.min_report_interval_s", self.min_report_interval_s, 0)
        at_least("detector.max_event_s", self.max_event_s, 0)


@dataclass
class GateConfig:
    """Which hops skip the model. Hops below the model's absolute level floor (its frontend's
    ``floor_db``: silence, DC, sub-LSB noise) never run it; the activity gate additionally
    skips hops with nothing above the running noise floor (off by default)."""

    activity: bool = False  # skip hops with no band energy above the running noise floor
    threshold_db: float = 6.0  # a hop is active when a band rises this far above its floor
    bands: int = 16  # mel bands are pooled into this many groups
    smooth_s: float = 0.05  # time smoothing of the band energies
    floor_quantile: float = 0.2  # a window's noise estimate: this quantile over time, per band
    floor_rise_db_per_s: float = 1.0  # how fast the running floor may rise (it falls at once)
    hold_s: float = 1.0  # keep running the model this long after the last active hop

    def validate(self) -> None:
        positive("gate.threshold_db", self.threshold_db)
        at_least("gate.bands", self.bands, 1)
        at_least("gate.smooth_s", self.smooth_s, 0)
        if not 0.0 <= self.floor_quantile < 1.0:
            bad("gate.floor_quantile", f"{self.floor_quantile} must be within 0..1 (exclusive)")
        at_least("gate.floor_rise_db_per_s", self.floor_rise_db_per_s, 0)
        at_least("gate.hold_s", self.hold_s, 0)


@dataclass
class MqttConfig:
    """Broker connection and topics (``<prefix>/<device_id>/detections`` ...)."""

    enabled: bool = True
    host: str = "localhost"
    port: int = 1883
    prefix: str = "sonotrap"
    device_id: str | None = None  # None = hostname
    client_id: str | None = None  # None = "sonotrap-<device_id>" (stable per device)
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    protocol: str = "3.1.1"  # "3.1.1" or "5"
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 120.0
    status_interval_s: float = 30.0
    homeassistant: bool = False  # publish Home Assistant MQTT discovery
    discovery_prefix: str = "homeassistant"
    qos: int = 1  # detections and events: 1 = at least once; 2 = exactly once through broker restarts (MQTT 5)
    max_inflight: int = 20  # unacknowledged detections on the wire (order is kept)
    session_expiry_s: int = 604800  # MQTT 5: broker keeps our session (cmd/update QoS 1) this long
    connect_timeout_s: float = 10.0  # TCP/TLS connect + CONNACK

    def validate(self) -> None:
        if not 1 <= self.port <= 65535:
            bad("mqtt.port", f"{self.port} must be within 1..65535")
        choice("mqtt.protocol", self.protocol, ("3.1.1", "5"))
        if self.qos not in (1, 2):
            bad("mqtt.qos", f"{self.qos!r} must be 1 or 2 (QoS 0 would lose detections whenever the broker is away)")
        if self.qos == 2 and self.protocol != "5":
            bad("mqtt.qos", 'QoS 2 needs mqtt.protocol = "5" (a new process must start a clean session, '
                "which MQTT 3.1.1 cannot do without dropping the session on every reconnect)")
        if not self.prefix or any(c in self.prefix for c in "#+"):
            bad("mqtt.prefix", f"{self.prefix!r} must be non-empty without '#' or '+'")
        if self.password and self.password_file:
            bad("mqtt.password_file", "set either mqtt.password or mqtt.password_file, not both")
        if bool(self.cert_file) != bool(self.key_file):
            bad("mqtt.cert_file", "client cert_file and key_file must be given together")
        at_least("mqtt.keepalive_s", self.keepalive_s, 5)
        if self.reconnect_min_s <= 0 or self.reconnect_max_s < self.reconnect_min_s:
            bad("mqtt.reconnect_min_s", "needs 0 < reconnect_min_s <= reconnect_max_s")
        if (self.password or self.password_file) and not self.username:
            bad("mqtt.username", "is required when mqtt.password or mqtt.password_file is set")
        if (self.ca_file or self.cert_file or self.tls_insecure) and not self.tls:
            bad("mqtt.tls", "must be true when ca_file, cert_file or tls_insecure is set")
        positive("mqtt.status_interval_s", self.status_interval_s)
        at_least("mqtt.max_inflight", self.max_inflight, 1)
        at_least("mqtt.session_expiry_s", self.session_expiry_s, 0)
        positive("mqtt.connect_timeout_s", self.connect_timeout_s)
        if not self.discovery_prefix or any(c in self.discovery_prefix for c in "#+"):
            bad("mqtt.discovery_prefix", f"{self.discovery_prefix!r} must be non-empty without '#' or '+'")
        if self.device_id is not None and (not self.device_id or any(c in self.device_id for c in "#+/")):
            bad("mqtt.device_id", f"{self.device_id!r} must be non-empty without '#', '+' or '/'")


@dataclass
class OutboxConfig:
    """Store-and-forward queue on disk (SQLite, WAL)."""

    path: str | None = None  # None = <state_dir>/outbox.sqlite
    max_messages: int = 100_000  # beyond this the oldest are dropped (counted, reported)
    synchronous: str = "full"  # SQLite fsync policy: "full" survives power cuts, "normal" only crashes
    retry_s: float = 60.0  # after a disk error (full, read-only): how often to try the disk again

    def validate(self) -> None:
        at_least("outbox.max_messages", self.max_messages, 1)
        choice("outbox.synchronous", self.synchronous, ("normal", "full"))
        positive("outbox.retry_s", self.retry_s)


@dataclass
class ClipsConfig:
    """Optional WAV clip per event with a disk quota (oldest deleted first)."""

    enabled: bool = False
    dir: str | None = None  # None = <state_dir>/clips
    pre_s: float = 1.0
    post_s: float = 1.0
    quota_mb: float = 500.0

    def validate(self) -> None:
        at_least("clips.pre_s", self.pre_s, 0)
        at_least("clips.post_s", self.post_s, 0)
        positive("clips.quota_mb", self.quota_mb)


@dataclass
class UpdateConfig:
    """Fleet model updates (``sonotrap update``, the update timer, MQTT ``cmd/update``)."""

    channel: str = "stable"  # index.json channel to follow
    url: str | None = None  # HTTP(S) index.json (or a base URL serving index.json) + bundles
    local_dir: str | None = None  # USB stick / rsync target with bundles (+ optional index.json)
    allowed_base_urls: list[str] = field(default_factory=list)  # for MQTT cmd/update URLs
    trusted_keys_dir: str | None = None  # None = <config dir>/trusted_keys
    allow_unsigned: bool = False
    allow_downgrade: bool = False  # install versions older than the current one (else refused)
    keep_versions: int = 3  # installed versions kept (current and previous always)
    max_download_mb: float = 200.0
    min_free_mb: float = 50.0  # free space left on the state disk after an update
    health_timeout_s: float = 120.0  # new model must serve hops within this, else rollback
    jitter_s: float = 600.0  # random delay before polling (`sonotrap update` without --no-jitter)
    http_timeout_s: float = 30.0  # one network read or connect
    deadline_s: float = 600.0  # one whole index fetch or bundle download (all resumes), however slow the server
    verify_timeout_s: float = 300.0  # load + self-test of a new bundle (separate process)
    verify_memory_mb: float = 2048.0  # address-space limit (RLIMIT_AS) of the verifying process
    command_window_s: float = 300.0  # signed MQTT commands must be issued within this of the device clock

    def validate(self) -> None:
        if not self.channel or any(c in self.channel for c in "/#+ "):
            bad("update.channel", f"{self.channel!r} must be a non-empty name like 'stable'")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            bad("update.url", f"{self.url!r} must start with http:// or https://")
        for i, base in enumerate(self.allowed_base_urls):
            if not base.startswith(("http://", "https://")):
                bad(f"update.allowed_base_urls[{i}]", f"{base!r} must start with http:// or https://")
        at_least("update.keep_versions", self.keep_versions, 1)
        positive("update.max_download_mb", self.max_download_mb)
        at_least("update.min_free_mb", self.min_free_mb, 0)
        positive("update.health_timeout_s", self.health_timeout_s)
        at_least("update.jitter_s", self.jitter_s, 0)
        positive("update.http_timeout_s", self.http_timeout_s)
        positive("update.verify_timeout_s", self.verify_timeout_s)


@dataclass
class Config:
    """The whole daemon configuration."""

    state_dir: str = field(default_factory=default_state_dir)  # a device config sets /var/lib/sonotrap
    log_level: str = "INFO"
    audio: AudioConfig = field(default_factory=AudioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    clips: ClipsConfig = field(default_factory=ClipsConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)

    def validate(self) -> None:
        choice("log_level", self.log_level.upper(), ("DEBUG", "INFO", "WARNING", "ERROR"))
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section) and not isinstance(section, type):
                section.validate()  # type: ignore[attr-defined]  # every section dataclass has validate()
        check_bounds(self)  # every number its range, every string its character set


# ---------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read and validate a TOML config; ``None`` gives the defaults (plus overrides)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SonotrapError(
                f"config file {p} does not exist; create it (see README) or pass --config"
            ) from None
        except (OSError, UnicodeDecodeError) as err:
            raise SonotrapError(f"config file {p} cannot be read ({err}); fix its permissions") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise SonotrapError(f"config file {p} is not valid TOML: {err}; fix that line") from None
    cfg = from_dict(Config, data, "")
    if overrides:
        apply_overrides(cfg, overrides)
    cfg.validate()
    warn_about_secrets(cfg, path)
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> None:
    """Apply ``section.key=value`` strings (value parsed as TOML, else taken as a string)."""
    for item in overrides:
        if "=" not in item:
            bad(item, "override must look like section.key=value")
        dotted, raw = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        set_value(cfg, dotted.strip(), value)
