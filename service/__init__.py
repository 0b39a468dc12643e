"""The HTTP service: ``POST /respond`` samples diverse next responses from a checkpoint.

``service.app.create_app(engine)`` builds the FastAPI app around a
``service.engine.InferenceEngine``; ``python -m service`` runs it with uvicorn.
"""

from model.dependencies import SERVE, require

require(("torch", "numpy", "safetensors", "fastapi", "uvicorn", "pydantic_settings"), SERVE)
