"""The recipe's JSON Schema, generated from the pydantic models (so it cannot drift)."""

from __future__ import annotations

import json

from trtflow.recipe.schema import Recipe


def recipe_json_schema() -> str:
    schema = Recipe.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://trtflow.dev/schemas/recipe.schema.json"
    schema["title"] = "trtflow recipe"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
