"""The test-only fault points: parsed strictly, fire once, hold until released."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from streams.errors import ConfigurationError
from streams.faults import NO_FAULTS, FaultPoints
from streams.pipeline import RawRecord


def records() -> list[RawRecord]:
    return [RawRecord("clicks", p, o, b"u", b"{}", 0) for p, o in ((0, 4), (0, 7), (1, 2))]


def test_no_variable_means_no_fault():
    assert FaultPoints.from_env({}) is NO_FAULTS


@pytest.mark.parametrize("spec, error", [("after_lunch:hold", "unknown point"), ("after_apply:explode", "unknown action")])
def test_a_misspelt_fault_is_a_configuration_error(spec, error, tmp_path):
    with pytest.raises(ConfigurationError, match=error):
        FaultPoints.from_env({"IU_TEST_FAULT": spec, "IU_TEST_FAULT_DIR": str(tmp_path)})


def test_a_fault_needs_a_meeting_directory():
    with pytest.raises(ConfigurationError, match="IU_TEST_FAULT_DIR"):
        FaultPoints.from_env({"IU_TEST_FAULT": "after_apply"})


def test_hold_describes_the_batch_waits_for_the_release_and_fires_once(tmp_path):
    faults = FaultPoints.from_env({"IU_TEST_FAULT": "after_apply:hold", "IU_TEST_FAULT_DIR": str(tmp_path)})

    async def scenario():
        await faults.at("after_embed", records())  # another point: passes straight through
        held = asyncio.create_task(faults.at("after_apply", records()))
        while not (tmp_path / "after_apply.reached").exists():
            await asyncio.sleep(0.01)
        assert not held.done()
        (tmp_path / "after_apply.release").touch()
        await asyncio.wait_for(held, 10)
        (tmp_path / "after_apply.release").unlink()
        await asyncio.wait_for(faults.at("after_apply", records()), 1)  # fired already: no second hold

    asyncio.run(scenario())
    reached = orjson.loads((tmp_path / "after_apply.reached").read_bytes())
    assert reached == {"records": 3, "last_offsets": {"clicks:0": 7, "clicks:1": 2}}
