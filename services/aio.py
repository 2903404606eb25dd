"""Task plumbing shared by the long-running parts."""
from __future__ import annotations

import asyncio

from services.logs import log


async def cancel_all(tasks: list[asyncio.Task]) -> None:
    """Cancel and await; a task that swallowed its cancellation (a library race) is cancelled again."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=2)
        if pending:
            log.warning("tasks survived a cancellation; cancelling again", tasks=[t.get_name() for t in pending])


async def stop_consumer(consumer) -> None:
    """`consumer.stop()`, but a cancellation of aiokafka's own does not escape it: stopped while a fetch backs off
    from a broker that is not there (a restart, an outage), its fetcher cancels that fetch task and awaits it, and
    the task's CancelledError comes out of stop() (aio-libs/aiokafka#647; `slotledger up` then exited 1 on Ctrl-C
    just after its broker restarted). Only a cancellation of the caller propagates; the client stop() did not get
    to is closed here."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("the Kafka consumer's stop let its own fetch task's cancellation out; closing its client")
        await consumer._client.close()  # what stop() does after its fetcher (no public way to reach it)
