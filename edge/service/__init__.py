"""The long-running service: daemon loop, systemd notification, audio clips."""
