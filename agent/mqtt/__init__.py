"""The MQTT side (mqtt.md): status with will, info, SenML data, device status, metrics.

* :mod:`citygate.mqtt.session`: the connection (TLS, credentials, will, backoff, reconnect)
  and the client's lifetime: one client, one MQTT session, for the publisher's whole life;
* :mod:`citygate.mqtt.data`: the data loop (buffer → SenML packs → PUBACK → acked rows);
* :mod:`citygate.mqtt.announce`: the gateway's status, info and metrics, the devices' statuses;
* :mod:`citygate.mqtt.publisher`: :class:`Publisher`, the three together.
"""

from citygate.mqtt.publisher import Publisher

__all__ = ["Publisher"]
