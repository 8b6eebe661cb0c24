"""trtflow: recipe -> plan -> graph passes -> backends -> runtime -> generated runner."""

__version__ = "0.1.0"
