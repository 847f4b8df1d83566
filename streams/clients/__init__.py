"""Helpers for the services around the workers: producers of events and consumers of recommendations.

Importable with kafka-python, orjson and jsonschema alone (no torch, Faust or
Redis; a test checks this in a bare virtual environment):

- `producer.EventProducer`: validate click and text events against the shipped
  JSON Schemas, then send them keyed by user;
- `consumer.LatestRecommendations` and `consumer.follow`: read the
  recommendation topic, keeping the newest version per user;
- `kafka`: topic creation, a rate-limited sender and a plain consumer.
"""
