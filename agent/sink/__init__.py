"""``citygate sink``: the reference consumer, data messages into PostgreSQL (optional extra
``citygate[sink]``; a gateway never imports this package).

* :mod:`citygate.sink.parse`: a data message to rows, strict (sans-I/O);
* :mod:`citygate.sink.cbor_decode`: the bounded CBOR decoder it uses (sans-I/O);
* :mod:`citygate.sink.db`: the schema (schema.sql) and one transaction per batch (asyncpg);
* :mod:`citygate.sink.service`: the MQTT side, batching, acknowledgement after commit.
"""
