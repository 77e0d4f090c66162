"""The MQTT side (mqtt.md): status with will, info, SenML data, device status, metrics.

* :mod:`citygate.mqtt.client`: an asyncio client over paho-mqtt's public API (PUBACK reason
  codes, incoming messages counted and dropped, maximum packet size announced);
* :mod:`citygate.mqtt.session`: the connection (TLS, credentials, will, backoff, reconnect,
  cluster urls) and the client's lifetime: one client, one MQTT session, for the publisher's
  whole life;
* :mod:`citygate.mqtt.data`: the data loop (buffer → SenML packs → PUBACK → acked rows;
  refused rows stay buffered and are retried);
* :mod:`citygate.mqtt.announce`: the gateway's status, info and metrics, the devices' statuses;
* :mod:`citygate.mqtt.publisher`: :class:`Publisher`, the three together.
"""

from citygate.mqtt.publisher import Publisher

__all__ = ["Publisher"]
