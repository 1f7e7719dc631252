"""An async web service with one supervisor in its lifespan (Starlette on uvicorn).

- the supervisor opens with the app and closes with it: leaving the lifespan waits at
  most ``grace`` seconds for running work, then cancels it;
- ``POST /report?n=3`` submits a small graph (``n`` fetches in parallel, each taking
  ``delay`` seconds, then a summary that takes their outputs) and answers with the
  summary;
- ``GET /price?item=x`` uses ``sup.call``: one task, its value; if the client goes away,
  the request is cancelled and so is the task;
- ``GET /stats`` shows the supervisor's statistics.

Run it: ``pip install 'taskvisor[web]'`` then ``python examples/web_service.py``
(``--port 8000``), and try ``curl -X POST 'localhost:8000/report?n=3'``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import taskvisor as tv

GRACE = 5.0  # seconds leaving the lifespan waits for running work before it cancels it


async def fetch(source: int, delay: float = 0.01) -> dict[str, int]:
    await asyncio.sleep(delay)  # a call to another service
    return {"source": source, "rows": 10 * source}


def summarise(*parts: dict[str, int]) -> dict[str, int]:  # CPU work: a thread task
    return {"sources": len(parts), "rows": sum(p["rows"] for p in parts)}


def price(item: str) -> float:
    return round(len(item) * 1.25, 2)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with tv.Supervisor(threads=8, grace=GRACE) as sup:
        app.state.sup = sup
        yield
    # closed: every task it was given has ended, each with its TaskRes
    ended = {state.name: n for state, n in sup.statistics().tasks.items() if n}
    print(f"supervisor closed: {ended}", flush=True)


async def report(request: Request) -> JSONResponse:
    sup: tv.Supervisor = request.app.state.sup
    n = int(request.query_params.get("n", "3"))
    delay = float(request.query_params.get("delay", "0.01"))
    fetches = [tv.Task(fetch, (i, delay), runs_on="main") for i in range(1, n + 1)]
    summary = tv.Task(summarise, tuple(f.output for f in fetches), tier="high")
    result = await sup.gather([*fetches, summary])
    if not result.ok:
        return JSONResponse({"error": str(result.errors)}, status_code=500)
    return JSONResponse(result[summary.name].ret)


async def get_price(request: Request) -> JSONResponse:
    sup: tv.Supervisor = request.app.state.sup
    item = request.query_params.get("item", "")
    return JSONResponse({"item": item, "price": await sup.call(price, item, timeout=5)})


async def stats(request: Request) -> JSONResponse:
    s = request.app.state.sup.statistics()
    return JSONResponse({"state": s.state.value, "tasks": {k.name: v for k, v in s.tasks.items()}})


app = Starlette(
    routes=[
        Route("/report", report, methods=["POST"]),
        Route("/price", get_price),
        Route("/stats", stats),
    ],
    lifespan=lifespan,
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port)
