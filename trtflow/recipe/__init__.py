"""Recipes: the YAML a user writes, validated strictly."""

from trtflow.recipe.loader import LoadedRecipe, discover_recipes, load_recipe, parse_recipe
from trtflow.recipe.schema import Recipe

__all__ = ["LoadedRecipe", "Recipe", "discover_recipes", "load_recipe", "parse_recipe"]
