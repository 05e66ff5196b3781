"""MQTT transport: outbox, publisher, payloads and Home Assistant discovery (the only paho user)."""
