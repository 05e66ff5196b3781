"""The one place that talks to paho: MQTT client set-up, security, backoff, broker check.

Every MQTT client of sonotrap (the daemon's publisher, the updater's short-lived event
reporter, ``sonotrap check``) is built here, so credentials, TLS (explicit ``cert_reqs``),
connect timeouts and the paho API version are decided once. Nothing else imports paho.
"""

from __future__ import annotations

import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import MqttConfig
from edge.errors import SonotrapError

#: publish return codes that mean "queued" (sent now, or kept by paho until the connection is back)
PUBLISH_QUEUED = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)


def backoff_delay(attempt: int, low: float, high: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": uniform in [d/2, d], d = min(high, low * 2**attempt).

    Jitter keeps a fleet of recorders that lost the same broker from reconnecting in lockstep.
    """
    d = min(high, low * (2 ** min(attempt, 30)))
    return (rng or random).uniform(d / 2, d)


class Client(mqtt.Client):
    """paho client that remembers why the last connect failed (paho's callback does not say)."""

    last_connect_error: BaseException | None = None
    before_connect: Callable[[], None] | None = None

    def reconnect(self) -> MQTTErrorCode:
        if self.before_connect is not None:
            self.before_connect()
        try:
            return super().reconnect()
        except OSError as err:
            self.last_connect_error = err
            raise


def refusal_hint(reason_code: Any) -> str:
    """What to check when the broker answers CONNECT with a failure code."""
    if getattr(reason_code, "value", None) in (4, 5, 134, 135):  # bad user name or password / not authorized
        return "; check mqtt.username and mqtt.password / password_file"
    return ""


def connect_error_hint(err: BaseException | None) -> str:
    """What to check when the TCP/TLS connection itself fails."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return "; check mqtt.ca_file (and mqtt.tls_insecure for a host name mismatch)"
    if isinstance(err, ssl.SSLError):
        return "; check mqtt.tls, mqtt.port and the client certificate"
    if isinstance(err, socket.gaierror):
        return "; check mqtt.host"
    return "; is the broker running and mqtt.host/port right?"


def new_client(cfg: MqttConfig, client_id: str, *, persistent_session: bool = False) -> Client:
    """A configured (not yet connected) paho client: protocol, credentials, TLS, connect timeout.

    ``persistent_session``: the broker keeps our session (subscriptions, queued QoS-1 messages)
    across reconnects; MQTT 5 chooses it at connect time, see :func:`connect_async`.
    """
    if cfg.protocol == "5":
        client = Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    else:
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=not persistent_session,
        )
    client.connect_timeout = cfg.connect_timeout_s
    configure_security(client, cfg)
    return client


def connect_async(client: mqtt.Client, cfg: MqttConfig, *, persistent_session: bool = False) -> None:
    """Start connecting in paho's network thread (MQTT 5: a session expiry when persistent).

    With ``mqtt.qos = 2`` the first connect of a process starts a clean session: the broker may
    still hold QoS-2 packet ids of the previous process, which paho no longer knows, and a new
    message reusing such an id would be taken for a duplicate and dropped. Later reconnects of
    the same process resume the session, so a broker restart delivers each message once.
    """
    if cfg.protocol == "5" and persistent_session:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = cfg.session_expiry_s
        clean = mqtt.MQTT_CLEAN_START_FIRST_ONLY if cfg.qos == 2 else False
        client.connect_async(cfg.host, cfg.port, cfg.keepalive_s, clean_start=clean, properties=props)
    else:
        client.connect_async(cfg.host, cfg.port, cfg.keepalive_s)


def connect_blocking(cfg: MqttConfig, client_id: str) -> Client:
    """A connected client with its network loop running, for short-lived reporters.

    Raises SonotrapError for bad credential/TLS files and OSError when the broker cannot be
    reached within ``cfg.connect_timeout_s``.
    """
    client = new_client(cfg, client_id)
    client.connect(cfg.host, cfg.port, keepalive=min(cfg.keepalive_s, 60))
    client.loop_start()
    return client


def configure_security(client: mqtt.Client, cfg: MqttConfig) -> None:
    """Username/password (or password_file) and TLS; bad files raise SonotrapError at once."""
    password = cfg.password
    if cfg.password_file:
        try:
            password = Path(cfg.password_file).read_text(encoding="utf-8").strip("\r\n")
        except OSError as err:
            raise SonotrapError(
                f"mqtt.password_file {cfg.password_file} cannot be read ({err.strerror}); fix the path or permissions"
            ) from None
    if cfg.username:
        client.username_pw_set(cfg.username, password)
    if cfg.tls:
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(cfg, key)
            if path and not Path(path).is_file():
                raise SonotrapError(f"mqtt.{key} {path} does not exist; fix the path")
        try:
            client.tls_set(
                ca_certs=cfg.ca_file,
                certfile=cfg.cert_file,
                keyfile=cfg.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (ssl.SSLError, OSError, ValueError) as err:
            raise SonotrapError(
                f"mqtt TLS files cannot be loaded ({err}); check mqtt.ca_file, cert_file and key_file"
            ) from None
        if cfg.tls_insecure:
            client.tls_insecure_set(True)


def check_broker(cfg: MqttConfig, device_id: str, timeout: float = 5.0) -> str:
    """Connect once and disconnect; raise SonotrapError if the broker is unreachable or refuses us.

    Uses its own client id and no Last Will, so a running daemon's session and status are
    untouched. Returns a one-line description for ``sonotrap check``.
    """
    where = f"{cfg.host}:{cfg.port}"
    client_id = f"sonotrap-check-{device_id}-{random.randrange(1 << 30)}"
    client = new_client(cfg, client_id)
    client.connect_timeout = min(timeout, cfg.connect_timeout_s)
    result: dict[str, Any] = {}
    done = threading.Event()

    def on_connect(c, u, flags, reason_code, properties):
        result["rc"] = reason_code
        done.set()

    def on_disconnect(c, u, flags, reason_code, properties):
        if not done.is_set():
            result["closed"] = reason_code
            done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(cfg.host, cfg.port, cfg.keepalive_s)
    except ssl.SSLCertVerificationError as err:
        raise SonotrapError(f"mqtt broker {where}: TLS certificate not trusted ({err.verify_message}); check mqtt.ca_file") from None
    except OSError as err:
        raise SonotrapError(f"mqtt broker {where} unreachable ({err}); check mqtt.host, mqtt.port and mqtt.tls") from None
    client.loop_start()
    try:
        if not done.wait(timeout):
            raise SonotrapError(f"mqtt broker {where} did not answer within {timeout:.0f} s; check mqtt.port and mqtt.tls")
        if "closed" in result:
            raise SonotrapError(
                f"mqtt broker {where} closed the connection during the handshake ({result['closed']}); "
                "check mqtt.tls and the client certificate (mqtt.cert_file / key_file)"
            )
        rc = result["rc"]
        if rc.is_failure:
            raise SonotrapError(f"mqtt broker {where} refused the connection ({rc}); check mqtt.username and password")
    finally:
        client.disconnect()
        client.loop_stop()
    return f"broker {where} accepts MQTT {cfg.protocol} connections{' over TLS' if cfg.tls else ''}"


def publish_retained(cfg: MqttConfig, device_id: str, messages: list[tuple[str, bytes]], timeout: float = 10.0) -> str:
    """Connect once, publish ``messages`` retained with QoS 1, wait for the broker's acks, disconnect.

    For one-shot maintenance (``sonotrap ha-cleanup``): its own client id, no Last Will, so a
    running daemon is untouched. Returns the broker's ``host:port``.
    """
    where = f"{cfg.host}:{cfg.port}"
    check_broker(cfg, device_id, timeout)  # the exact reason when the broker is unreachable or refuses us
    client = new_client(cfg, f"sonotrap-tool-{device_id}-{random.randrange(1 << 30)}")
    client.connect_timeout = min(timeout, cfg.connect_timeout_s)
    try:
        client.connect(cfg.host, cfg.port, cfg.keepalive_s)
    except OSError as err:
        raise SonotrapError(f"mqtt broker {where} unreachable ({err}); check mqtt.host, mqtt.port and mqtt.tls") from None
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1, retain=True) for topic, payload in messages]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise SonotrapError(f"mqtt broker {where} did not acknowledge within {timeout:.0f} s; try again")
    finally:
        client.disconnect()
        client.loop_stop()
    return where
