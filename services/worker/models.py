"""Per-process caches: the base model components, the preset's segmenter and styling weights (each loaded lazily,
once), inverted layout references, and ED-LoRA files on local disk.

The segmenter (``core.ml.masks.sam.load_segmenter``) is only loaded when a training job needs masks computed: for
``tiny`` a small SAM built deterministically into ``<root>/tiny/sam/``, for ``sd15`` Meta's ViT-H checkpoint that
the operator puts at ``<root>/sd15/sam/sam_vit_h_4b8939.pth``, for ``shapes`` the colour segmenter (exact in that
world; no weights).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

import torch

from core.config import ModelSettings
from core.errors import ModelLoadError
from core.ml.components import SDComponents, load_components
from core.ml.edlora.adapter import EDLoRAWeights, load_adapter
from core.ml.fusion.inversion import InversionCache
from core.ml.masks.sam import load_segmenter
from core.ml.masks.segmenter import Segmenter
from core.ml.styling.weights import StylingWeights, load_styling_weights
from core.stores.objects import ObjectStore

logger = logging.getLogger(__name__)


class ModelCache:
    """Loads the configured preset on first use and keeps it for the life of the process.

    Loading happens inside the first task, never at worker start-up, so a slow load cannot trip
    Celery's process-init timeout and a worker with no jobs holds no GPU memory.
    """

    def __init__(self, settings: ModelSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._components: SDComponents | None = None
        self._segmenter: Segmenter | None = None
        self._styling: StylingWeights | None = None
        self.inversions = InversionCache()
        """Layout references inverted for Concept Conductor, by image content and prompt."""

    def device_and_dtype(self) -> tuple[str, str]:
        device = self._settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = self._settings.dtype
        if dtype == "auto":
            dtype = "float16" if device.startswith("cuda") else "float32"
        return device, dtype

    def components(self) -> SDComponents:
        with self._lock:
            if self._components is None:
                device, dtype = self.device_and_dtype()
                if device == "cpu" and self._settings.cpu_threads:
                    torch.set_num_threads(self._settings.cpu_threads)
                logger.info("loading preset %s on %s (%s)", self._settings.preset, device, dtype)
                self._components = load_components(
                    self._settings.preset, self._settings.root, device=device, dtype=getattr(torch, dtype)
                )
            return self._components

    def segmenter(self) -> Segmenter:
        """The preset's segmenter for training masks, loaded on first use (see the module docstring)."""
        with self._lock:
            if self._segmenter is None:
                device, _ = self.device_and_dtype()
                logger.info("loading the segmenter of preset %s on %s", self._settings.preset, device)
                self._segmenter = load_segmenter(self._settings.preset, self._settings.root, device=device)
            return self._segmenter

    def styling(self) -> StylingWeights:
        """The preset's styling weights (IP-Adapter image encoder, ControlNets), loaded on first use.

        ``tiny`` builds them into ``<root>/tiny/`` deterministically; ``sd15`` reads ``<root>/sd15/ip-adapter/`` and
        ``<root>/sd15/controlnet/<type>/`` (``tessera models pull sd15``).
        """
        with self._lock:
            if self._styling is None:
                device, dtype = self.device_and_dtype()
                logger.info("loading the styling weights of preset %s on %s", self._settings.preset, device)
                self._styling = load_styling_weights(
                    self._settings.preset, self._settings.root, device=device, dtype=getattr(torch, dtype)
                )
            return self._styling


class AdapterCache:
    """ED-LoRA files kept on local disk by content hash, so a concept is downloaded once per machine."""

    def __init__(self, root: Path, objects: ObjectStore) -> None:
        self._root = root
        self._objects = objects
        self._loaded: dict[str, EDLoRAWeights] = {}

    def get(self, key: str, sha256: str | None) -> EDLoRAWeights:
        name = sha256 or hashlib.sha256(key.encode()).hexdigest()
        if name in self._loaded:
            return self._loaded[name]
        path = self._root / f"{name}.safetensors"
        if not path.exists():
            self._root.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.part")
            self._objects.get_to_path(key, tmp)
            if sha256 is not None and hashlib.sha256(tmp.read_bytes()).hexdigest() != sha256:
                tmp.unlink(missing_ok=True)
                raise ModelLoadError(f"adapter {key} does not match its recorded sha256")
            os.replace(tmp, path)
        weights = load_adapter(path)
        if len(self._loaded) >= 32:
            self._loaded.pop(next(iter(self._loaded)))
        self._loaded[name] = weights
        return weights
