"""Generate the JSON Schemas shipped to Kafka consumers and producers into schemas/json/.

Run `slotledger schemas export` (or `python -m schemas.export`) after changing a model; a test fails while the
committed files differ from what the models generate.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from schemas.events import EVENT_PAYLOADS, cloud_type
from schemas.kafka import COMMAND, CloudEvent, CommandResult

OUT = Path(__file__).parent / "json"
_BASE = "https://slotledger.dev/schemas/"


def schema_url(name: str) -> str:
    """The `$id` of a shipped schema (and a CloudEvent's `dataschema`)."""
    return _BASE + name


def _schema(adapter: TypeAdapter, name: str, title: str) -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": schema_url(name), "title": title,
            **adapter.json_schema()}


def generate() -> dict[str, str]:
    """Relative path → file text."""
    docs = {
        "command.schema.json": _schema(COMMAND, "command.schema.json", "slotledger command (<prefix>.commands)"),
        "command-result.schema.json": _schema(TypeAdapter(CommandResult), "command-result.schema.json",
                                              "slotledger command result (<prefix>.command-results)"),
        "cloudevent.schema.json": _schema(TypeAdapter(CloudEvent), "cloudevent.schema.json",
                                          "slotledger event as CloudEvents 1.0 JSON (<prefix>.events)"),
    }
    for event_type, versions in EVENT_PAYLOADS.items():
        for version, model in versions.items():
            name = f"events/{cloud_type(event_type, version)}.schema.json"
            docs[name] = _schema(TypeAdapter(model), name, f"data of {cloud_type(event_type, version)}")
    return {name: json.dumps(doc, indent=2, sort_keys=True) + "\n" for name, doc in docs.items()}


def export(out: Path = OUT) -> list[Path]:
    written = []
    for name, text in generate().items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


if __name__ == "__main__":
    changed = export(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
    print(f"{len(changed)} schema file(s) written" if changed else "schemas are up to date")
