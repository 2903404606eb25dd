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
