"""The HTTP routes, one module per family; each holds an ``APIRouter`` named ``router``."""
