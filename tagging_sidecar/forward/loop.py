"""An asyncio event loop on a daemon thread of its own, shared by the gRPC transports."""

from __future__ import annotations

import asyncio
import contextlib
import threading


async def cancel_pending_tasks() -> None:
    """Cancel every other task on this loop and let them finish, so none is left pending."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class LoopThread:
    """Starts ``loop.run_forever`` on a daemon thread; :meth:`stop` ends both cleanly."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Cancel what still runs on the loop, stop it, join the thread and close the loop."""
        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(cancel_pending_tasks(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            # A stopped loop still holds its selector and self-pipe until closed.
            self.loop.close()
