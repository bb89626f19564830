from kubeharness.wire.cri import api_pb2 as api
from tests.conftest import CriHarness


async def test_a_pod_runs_and_exits_on_the_virtual_clock(cri: CriHarness) -> None:
    _, cid = await cri.run_container(args=["--exit-after=5s", "--exit-code=3"])
    assert (await cri.status(cid)).state == api.CONTAINER_RUNNING
    await cri.clock.advance(5)
    status = await cri.status(cid)
    assert (status.state, status.exit_code, status.reason) == (api.CONTAINER_EXITED, 3, "Error")
