"""Prefect flows: thin compositions of `tasks/` over a manifest."""

import os

# Measured on this stack (see NOTES): the server's telemetry tries a lookup off the machine,
# and the temporary server of ephemeral mode can start slowly on a loaded machine.
for _key, _value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                     "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}.items():
    os.environ.setdefault(_key, _value)
