"""Routes about the service itself: health (and /ping), version, the model list and card,
metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

import xyserve
from xyserve.server.context import Ctx
from xyserve.server.errors import APIError
from xyserve.server.protocol import ModelCard, ModelList

router = APIRouter()


@router.get("/health")
async def health(ctx: Ctx) -> Response:
    if not ctx.llm.is_alive:
        raise APIError("the engine is not running", 503, "internal_error")
    return Response(status_code=200)


@router.api_route("/ping", methods=["GET", "POST"])
async def ping(ctx: Ctx) -> Response:
    """SageMaker's health check, as vLLM serves it: /health's answer."""
    return await health(ctx)


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": xyserve.__version__}


@router.get("/v1/models")
async def models(ctx: Ctx) -> ModelList:
    return ModelList(data=ctx.cards())


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, ctx: Ctx) -> ModelCard:
    ctx.check_model(model_id)
    return ctx.card(model_id)


@router.get("/metrics")
async def prometheus(ctx: Ctx) -> Response:
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)
