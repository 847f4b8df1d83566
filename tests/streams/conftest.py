"""Shared by the pipeline and read-API tests."""

import pytest


class KeepingPublisher:
    """A publisher that keeps what it is given (Kafka's behaviour is not what those tests test)."""

    def __init__(self):
        self.dead, self.recs = [], []

    async def publish_dead_letters(self, letters):
        self.dead += letters

    async def publish_recommendations(self, events):
        self.recs += events


@pytest.fixture()
def keeping_publisher() -> KeepingPublisher:
    return KeepingPublisher()
