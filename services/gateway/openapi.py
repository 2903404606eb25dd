"""OpenAPI 3.1, generated from the route table and its pydantic models."""
from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, TypeAdapter

from schemas.http import ErrorResponse
from schemas.saludya import SaludYaError


def _schema(model: Any, components: dict[str, Any]) -> dict[str, Any]:
    schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    if isinstance(model, type) and issubclass(model, BaseModel):
        components[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}
    return schema


CREATED = ("/v1/appointments", "/v1/services", "/v1/branches", "/v1/appointment-slots", "/v1/doctors",
           "/v1/appointment-holds", "/v1/appointment-holds/{hold_id}/confirm", "/v1/waitlist", "/v1/webhooks")
ACCEPTED = ("/v1/webhooks/{webhook_id}/test", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry")
# Creates that answer an existing record with 200 and `idempotent: true`.
IDEMPOTENT = {("POST", "/v1/appointments"): "an active appointment with this external_reference_id exists",
              ("POST", "/v1/appointment-holds/{hold_id}/confirm"): "the hold was already confirmed, or an active "
              "appointment with this external_reference_id exists",
              ("POST", "/v1/waitlist"): "a waiting entry with this external_reference_id exists"}
GONE = {"/v1/appointment-holds/{hold_id}/confirm": "HOLD_EXPIRED (or HOLD_RELEASED): the hold no longer keeps "
        "its place; place a new one"}


def document(routes) -> dict[str, Any]:
    components: dict[str, Any] = {}
    error_refs = {"v1": _schema(ErrorResponse, components), "saludya": _schema(SaludYaError, components)}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op: dict[str, Any] = {"summary": route.summary, "security": [{"bearer": []}],
                              "x-required-scopes": list(route.scopes), "parameters": []}
        for name in re.findall(r"{(\w+)}", route.path):
            op["parameters"].append({"name": name, "in": "path", "required": True, "schema": {"type": "string"}})
        if route.query is not None:  # each field with its bounds (limit ≤ 200, dates YYYY-MM-DD, …)
            query = route.query.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(query.pop("$defs", {}))
            for name, field in route.query.model_fields.items():
                op["parameters"].append({"name": name, "in": "query", "required": field.is_required(),
                                         "schema": query["properties"][name]})
        if route.body is not None:
            op["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": _schema(route.body, components)}}}
        data = _schema(route.response, components) if route.response is not None else {}
        ok_status = "201" if route.method == "POST" and route.path in CREATED else \
            "202" if route.path in ACCEPTED else "200"
        if route.style == "v1":
            data = {"type": "object", "properties": {"success": {"const": True}, "data": data}}
        op["responses"] = {
            ok_status: {"description": "success", "content": {"application/json": {"schema": data}}},
            **({"200": {"description": f"idempotent: {IDEMPOTENT[route.method, route.path]}; it is answered,"
                               " with `idempotent: true`",
                        "content": {"application/json": {"schema": data}}}}
               if (route.method, route.path) in IDEMPOTENT else {}),
            **({"410": {"description": GONE[route.path],
                        "content": {"application/json": {"schema": error_refs[route.style]}}}}
               if route.path in GONE else {}),
            "default": {"description": "error",
                        "content": {"application/json": {"schema": error_refs[route.style]}}},
        }
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "slotledger", "version": "1"},
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }
