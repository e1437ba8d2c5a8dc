"""Deployment of the flows (`prefect.yaml`, README.md) and the fault drill (`faults.py`, `chaos.py`)."""
