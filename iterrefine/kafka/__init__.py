"""Kafka plumbing (layer 4): clients built from :class:`~iterrefine.config.KafkaConfig`
(security settings in one place) and the topic names and their creation. Imports only the
layers below; :mod:`iterrefine.broker` is its peer and neither imports the other.
"""
