"""Package data: the device profiles (devices/*.yaml) and the built-in models (models/NAME/config.json).

A Python package only so that every layer can find them without importing the package root.
"""
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
DEVICES_DIR = CONFIG_DIR / "devices"
MODELS_DIR = CONFIG_DIR / "models"
